import copy
import random

import pytest
import torch
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

from chatbot.model import precision
from chatbot.bot import ChatBot
from chatbot.cli import chat_main
from chatbot.data.dataset import load_dataset, make_collate
from chatbot.evaluate import evaluate_model
from chatbot.model.modeling import build_model, load_model, save_model
from chatbot.model.kernels import PackedLinear
from chatbot.model.precision import prepare_model, resolve_dtype
from tests.conftest import tiny_config

pytestmark = pytest.mark.transformers_api

HANZI = "你好吗我很谢今天气"
PROMPTS = ["你好", "今天", "我很", "谢谢", "天气", "你", "好吗", "气很", "今天天气", "我"]


def markov_corpus(n: int, seed: int) -> str:
    """Dialogues drawn from a fixed random Markov chain over HANZI: a model can learn it, but not
    perfectly, so its perplexity stays well above 1 and small numeric changes show."""
    rng = random.Random(0)  # the chain is the same for every seed
    chain = {c: rng.choices(HANZI, k=3) for c in HANZI}  # three likely successors (repeats weigh more)
    rng = random.Random(seed)
    dialogues = []
    for _ in range(n):
        turns, c = [], rng.choice(HANZI)
        for _ in range(rng.randint(2, 3)):
            turn = []
            for _ in range(rng.randint(2, 6)):
                c = rng.choice(chain[c]) if rng.random() < 0.9 else rng.choice(HANZI)
                turn.append(c)
            turns.append("".join(turn))
        dialogues.append("\n".join(turns))
    return "\n\n".join(dialogues) + "\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """(model folder, validation corpus) of a 2-layer model trained 60 steps on the chain."""
    tmp = tmp_path_factory.mktemp("precision")
    (tmp / "train.txt").write_text(markov_corpus(300, seed=1), encoding="utf-8")
    (tmp / "valid.txt").write_text(markov_corpus(40, seed=2), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATBOT_CACHE", str(tmp / "cache"))
        dataset = load_dataset(tmp / "train.txt", tokenizer, max_len=64, progress=False)
        torch.manual_seed(0)
        model = build_model(tiny_config(tokenizer, n_embd=64)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        collate = make_collate(tokenizer)
        for step in range(60):
            batch = collate([dataset[(step * 32 + i) % len(dataset)] for i in range(32)])
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        folder = save_model(tmp / "model", model.eval(), tokenizer, {"max_len": 64, "loss_on": "all"})
        yield folder, tmp / "valid.txt"


@pytest.mark.parametrize(("dtype", "tolerance"), [("bf16", 0.01), ("int8", 0.03)])
def test_reduced_precision_keeps_perplexity_and_most_greedy_replies(trained, dtype, tolerance):
    folder, valid = trained

    def ppl(d):
        report = evaluate_model(str(folder), str(valid), device="cpu", dtype=d, generate=False,
                                progress=False)
        return report.perplexity["ppl"]

    def replies(d):
        bot = ChatBot.from_pretrained(folder, device="cpu", dtype=d, temperature=0, max_new_tokens=8)
        return [bot.reply(p, history=[]) for p in PROMPTS]

    reference = ppl("fp32")
    assert 1.5 < reference < 7  # learned the chain (a uniform guess over 22 tokens is 22)
    assert ppl(dtype) == pytest.approx(reference, rel=tolerance)
    same = sum(a == b for a, b in zip(replies("fp32"), replies(dtype)))
    assert same >= 8, f"{dtype}: {same}/{len(PROMPTS)} greedy replies match fp32"


def test_prepare_model_converts_the_linear_layers(tiny_model):
    ids = torch.tensor([[2, 7, 8, 3, 9, 3]])
    fp32 = copy.deepcopy(tiny_model)
    with torch.inference_mode():
        reference = tiny_model(ids).logits
        bf16 = prepare_model(copy.deepcopy(tiny_model), "bf16")
        assert not any(isinstance(m, (Conv1D, nn.Linear)) for m in bf16.modules())
        # 4 linear layers per block and lm_head, packed for oneDNN
        assert [type(m) for m in bf16.modules()].count(PackedLinear) == 9
        assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
        # GELU runs inside the packed c_fc
        assert [(type(b.mlp.act), b.mlp.c_fc.gelu_tanh) for b in bf16.transformer.h] == [(nn.Identity, True)] * 2
        assert bf16.config._attn_implementation == "chatbot_decode"
        torch.testing.assert_close(bf16(ids).logits.float(), reference, atol=0.05, rtol=0.05)
        int8 = prepare_model(copy.deepcopy(tiny_model), "int8")
        assert [m._get_name() for m in int8.modules()].count("DynamicQuantizedLinear") == 9
        assert not any(type(m) in (nn.Linear, PackedLinear) for m in int8.modules())
        assert [type(block.mlp.act) for block in int8.transformer.h] == [nn.GELU, nn.GELU]
        torch.testing.assert_close(int8(ids).logits, reference, atol=0.05, rtol=0.05)
        packed = prepare_model(fp32, "fp32")
        assert [type(m) for m in packed.modules()].count(PackedLinear) == 9
        assert [type(block.mlp.act) for block in packed.transformer.h] == [nn.Identity, nn.Identity]
        assert packed.config._attn_implementation == "sdpa"
        torch.testing.assert_close(packed(ids).logits, reference, atol=1e-5, rtol=1e-5)


def test_fp32_is_left_untouched_without_the_cpu_kernels(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(precision, "can_pack", lambda: False)
    model, _, _ = load_model(tiny_model_dir, "cpu", "fp32")
    assert isinstance(model.transformer.h[0].attn.c_attn, Conv1D)


@pytest.mark.parametrize(("cpu", "expected"), [
    ({"int8", "bf16"}, "int8"), ({"bf16"}, "bf16"), (set(), "fp32"),
])
def test_auto_picks_the_fastest_precision_the_cpu_runs_natively(monkeypatch, cpu, expected):
    monkeypatch.setattr(precision, "cpu_supports", lambda d: d == "fp32" or d in cpu)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("bf16", torch.device("cpu")) == "bf16"  # asked for, it is used


def test_gpu_precisions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(ValueError, match="int8 is CPU-only"):
        resolve_dtype("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, int8, got 'fp64'"):
        resolve_dtype("fp64", torch.device("cpu"))


@pytest.mark.parametrize(("device", "bf16_gpu", "cpu", "inference", "training"), [
    ("cuda", True, set(), "bf16", "bf16"), ("cuda", False, set(), "fp16", "fp16"),
    ("cpu", False, {"int8", "bf16"}, "int8", "bf16"), ("cpu", False, {"bf16"}, "bf16", "bf16"),
    ("cpu", False, {"int8"}, "int8", "fp32"), ("cpu", False, set(), "fp32", "fp32"),
    ("mps", False, {"int8", "bf16"}, "fp32", "fp32"),
])
def test_auto_means_the_same_for_inference_and_training_but_int8(monkeypatch, device, bf16_gpu, cpu,
                                                                   inference, training):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    monkeypatch.setattr(precision, "cpu_supports", lambda d: d == "fp32" or d in cpu)
    assert precision.resolve_dtype("auto", torch.device(device)) == inference
    assert precision.resolve_precision("auto", torch.device(device))[2] == training


def test_training_fp16_needs_a_gpu():
    assert precision.resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False, "bf16")
    with pytest.raises(ValueError, match=r"--precision fp16 needs a GPU; use bf16 or fp32 on CPU"):
        precision.resolve_precision("fp16", torch.device("cpu"))


def test_chat_rejects_an_unknown_dtype_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        chat_main(["--model", str(tmp_path / "absent"), "--dtype", "fp64"])
    assert e.value.code == 2 and "--dtype" in capsys.readouterr().err


def test_fused_gelu_computes_what_gelu_new_did():
    x = torch.linspace(-6, 6, 1001)
    holder = nn.Sequential(NewGELUActivation())
    expected = holder(x)
    precision.fuse_gelu(holder)
    assert type(holder[0]) is nn.GELU
    torch.testing.assert_close(holder(x), expected)


def test_linear_conversion_computes_what_conv1d_did():
    torch.manual_seed(0)
    conv = Conv1D(6, 4)
    holder = nn.Sequential(conv)
    x = torch.randn(3, 4)
    expected = conv(x)
    precision.conv1d_to_linear(holder)
    assert isinstance(holder[0], nn.Linear)
    torch.testing.assert_close(holder[0](x), expected)


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_training_auto_precision_is_bf16_on_cpus_that_run_it_natively(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(precision, "cpu_supports", lambda d: native_bf16 and d == "bf16")
    assert precision.resolve_precision("auto", torch.device("cpu"))[2] == expected
    assert precision.resolve_precision("fp32", torch.device("cpu"))[2] == "fp32"
