"""LoRA fine-tuning (chatbot-train --lora-r): adapters on a frozen tiny GPT-2 and a tiny OpenAI GPT in
CDial-GPT's layout, merged folders with their adapter, bare adapter folders wherever a model folder goes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, OpenAIGPTLMHeadModel

from chatbot.bot import ChatBot
from chatbot.cli import chat_main, train_main
from chatbot.config import TrainConfig
from chatbot.evaluate import evaluate_model
from chatbot.model.lora import LoraSettings, apply_lora, merged_state_dict, target_names
from chatbot.model.modeling import load_model, load_model_tokenizer, resolve_model_dir, save_model
from chatbot.train.checkpoint import STATE_FILE
from chatbot.train.loop import train
from conftest import TRAIN_DIALOGUES, tiny_config

pytestmark = pytest.mark.transformers_api

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ["README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
               "tokenizer.json", "tokenizer_config.json", "training_args.json", "vocab.txt", "weights.sha256"]
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "tokenizer.json",
                 "tokenizer_config.json", "training_args.json", "vocab.txt", "weights.sha256"]
# The tiny models' blocks: 2 x c_attn (32 in, 96 out); rank 4 adds A (4 x 32) and B (96 x 4) to each.
TRAINABLE_R4 = 2 * (4 * 32 + 96 * 4)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A model folder as chatbot-train writes it: the base LoRA adapts."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config(tokenizer))
    return save_model(tmp_path_factory.mktemp("base") / "tiny", model, tokenizer, {"max_len": 32})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_dir):
    """A LoRA run on `base_dir`: 8 steps with validation, a checkpoint every 2; its start table."""
    out = tmp_path_factory.mktemp("lora") / "out"
    corpus = out.parent / "train.txt"
    corpus.write_text("\n\n".join(TRAIN_DIALOGUES * 5), encoding="utf-8")
    tables = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATBOT_CACHE", str(out.parent / "cache"))
        mp.setattr("chatbot.train.loop.print_table", lambda title, rows: tables.update({title: dict(rows)}))
        train(TrainConfig(train=str(corpus), pretrained=str(base_dir), output_dir=str(out), epochs=2,
                          batch_size=4, lr=1e-2, lora_r=4, valid_ratio=0.2, save_steps=2, save_total_limit=0,
                          log_steps=1))
    return out, tables["chatbot-train"]


def weights(folder):
    return load_file(Path(folder) / "model.safetensors")


def test_lora_trains_only_the_adapters_and_says_so(lora_run, base_dir):
    out, plan = lora_run
    assert plan["trainable parameters"] == f"{TRAINABLE_R4:,} (3.50%)"  # of 28,224 + 1,024
    assert plan["LoRA"] == f"r 4, alpha 8, dropout 0.05 on c_attn; base {base_dir}"
    assert sorted(os.listdir(out / "checkpoint-4")) == sorted(ADAPTER_FILES + [STATE_FILE])
    # The optimizer holds the 4 adapter matrices' moments, nothing of the frozen model.
    moments = torch.load(out / "checkpoint-4" / STATE_FILE, weights_only=True)["optimizer"]["state"]
    assert sorted(tuple(m["exp_avg"].shape) for m in moments.values()) == [(4, 32), (4, 32), (96, 4), (96, 4)]
    base, final = weights(base_dir), weights(out / "final")
    assert [k for k in base if not torch.equal(base[k], final[k])] == [
        "transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"]


# PeftModel itself reads transformers' is_gradient_checkpointing, which transformers 5.24 deprecates.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_final_and_best_are_merged_folders_with_their_adapter(lora_run, base_dir):
    out, _ = lora_run
    for name in ("final", "best"):
        assert sorted(os.listdir(out / name)) == sorted(MODEL_FILES + ["adapter"])
        assert sorted(os.listdir(out / name / "adapter")) == ADAPTER_FILES
    # peft's own loading of the adapter, merged, is the merged folder to the bit.
    plain = GPT2LMHeadModel.from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(plain, out / "final" / "adapter").merge_and_unload()
    final = weights(out / "final")
    assert all(torch.equal(final[k], v) for k, v in merged.state_dict().items() if k in final)
    card = (out / "final" / "README.md").read_text(encoding="utf-8")
    assert "| fine-tuned with | LoRA of rank 4 on c_attn, merged into these weights; the adapter alone is in " \
           "`adapter/` |" in card


def test_merged_weights_compute_what_the_adapted_model_computes(tokenizer):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config(tokenizer))
    apply_lora(model, LoraSettings.of(4, targets="c_attn,c_fc"), base="tiny").eval()  # no LoRA dropout
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero, so an untrained adapter changes nothing
                p.normal_()
    merged = GPT2LMHeadModel(tiny_config(tokenizer)).eval()
    merged.load_state_dict(merged_state_dict(model))
    ids = torch.tensor([[2, 7, 8, 3, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_gpt2_and_openai_gpt_offer_the_same_targets(tokenizer, cdial_dir):
    gpt2 = GPT2LMHeadModel(tiny_config(tokenizer))
    openai_gpt = load_model(cdial_dir)[0]
    assert target_names(gpt2) == target_names(openai_gpt) == ["c_attn", "c_fc", "c_proj"]


def test_a_bare_adapter_folder_loads_wherever_a_model_folder_does(lora_run, tmp_path, monkeypatch):
    out, _ = lora_run
    adapter, final = out / "final" / "adapter", out / "final"
    model, _, args = load_model(adapter)
    assert isinstance(model, GPT2LMHeadModel) and args["lora_r"] == 4
    assert all(torch.equal(v, weights(final)[k]) for k, v in model.state_dict().items() if k in weights(final))
    assert ChatBot.from_pretrained(adapter, device="cpu").reply("你好", seed=3) == \
        ChatBot.from_pretrained(final, device="cpu").reply("你好", seed=3)
    valid = tmp_path / "valid.txt"
    valid.write_text("\n\n".join(TRAIN_DIALOGUES), encoding="utf-8")
    monkeypatch.setenv("CHATBOT_CACHE", str(tmp_path / "cache"))
    reports = [evaluate_model(str(m), str(valid), device="cpu", progress=False, generate=False)
               for m in (adapter, final)]
    assert reports[0].perplexity == reports[1].perplexity
    assert resolve_model_dir(adapter) == adapter  # chatbot-serve's check before it starts
    assert load_model_tokenizer(out / "checkpoint-2")[1] == "chitchat"  # chatbot-preprocess --tokenizer
    load_model(out / "checkpoint-2")  # a checkpoint is an adapter folder too
    assert train_main(["--train", str(valid), "--pretrained", str(adapter), "--output-dir", str(tmp_path / "again"),
                       "--max-steps", "1", "--batch-size", "2", "--quiet"]) == 0


def test_loading_an_adapter_hashes_each_weights_file_once(lora_run, base_dir, monkeypatch):
    from chatbot.model import weights as weights_module

    hashed = []
    real = weights_module.file_sha256
    monkeypatch.setattr(weights_module, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    load_model(lora_run[0] / "final" / "adapter")
    # The base's manifest is checked against its weights, and read again for base_sha256, not rehashed.
    assert sorted(hashed) == ["adapter_model.safetensors", "model.safetensors"]


def test_an_adapter_without_a_tokenizer_reads_text_as_its_base(lora_run, tmp_path, monkeypatch, capsys):
    out, _ = lora_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # what PeftModel.save_pretrained writes
        shutil.copy(out / "final" / "adapter" / name, bare / name)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("你好\n"))
    assert chat_main(["--model", str(bare), "--device", "cpu", "--no-transcript", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_lora_on_cdial_gpt_keeps_its_architecture_and_layout(cdial_dir, tmp_path, chatbot_cache):
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗\n我很好", "今天天气很好\nab 11"] * 4), encoding="utf-8")
    out = tmp_path / "out"
    train(TrainConfig(train=str(corpus), pretrained=str(cdial_dir), output_dir=str(out), epochs=1, batch_size=4,
                      loss_on="last", lr=1e-2, lora_r=4, quiet=True))
    tuned, tokenizer, args = load_model(out / "final")
    assert isinstance(tuned, OpenAIGPTLMHeadModel) and args["layout"] == "cdial"
    assert tokenizer.tokenize("ab 11") == ["a", "b", "1", "1"]
    base = torch.load(cdial_dir / "pytorch_model.bin")["transformer.h.1.attn.c_attn.weight"]
    assert not torch.equal(tuned.transformer.h[1].attn.c_attn.weight, base)
    assert torch.equal(tuned.transformer.h[1].mlp.c_fc.weight, torch.load(cdial_dir / "pytorch_model.bin")[
        "transformer.h.1.mlp.c_fc.weight"])
    reply = ChatBot.from_pretrained(out / "final", device="cpu").reply("你好", history=["谢谢"], seed=1)
    assert ChatBot.from_pretrained(out / "final" / "adapter", device="cpu").reply("你好", history=["谢谢"],
                                                                                  seed=1) == reply


def test_lora_combines_with_freeze_gradient_checkpointing_and_bf16(base_dir, corpus, tmp_path, chatbot_cache):
    out = tmp_path / "out"
    train(TrainConfig(train=str(corpus), pretrained=str(base_dir), output_dir=str(out), max_steps=3,
                      batch_size=4, lr=1e-2, lora_r=4, freeze="layers:1", gradient_checkpointing=True,
                      precision="bf16", quiet=True))
    base, final = weights(base_dir), weights(out / "final")
    assert torch.equal(final["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])
    assert not torch.equal(final["transformer.h.1.attn.c_attn.weight"], base["transformer.h.1.attn.c_attn.weight"])


# --- clear errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--lora-r", "0"], "--lora-r must be >= 1 (leave it out to train all weights), got 0"),
    (["--lora-alpha", "16"], "--lora-alpha sets up LoRA, which is off without --lora-r R"),
    (["--lora-r", "8", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--lora-r", "8", "--lora-targets", "c_attn;c_fc"], "--lora-targets must be layer names separated by commas"),
    (["--lora-r", "8", "--resize-embeddings"], "the rows --resize-embeddings adds would stay random"),
])
def test_bad_lora_flags_fail_before_work(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_unknown_targets_are_named_with_the_valid_ones(base_dir, corpus, tmp_path, chatbot_cache, capsys):
    assert train_main(["--train", str(corpus), "--pretrained", str(base_dir), "--output-dir", str(tmp_path / "o"),
                       "--lora-r", "8", "--lora-targets", "c_attn,q_proj", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: --lora-targets c_attn,q_proj: gpt2 has no q_proj layers; its blocks have c_attn, c_fc, " \
           "c_proj" in err and "Traceback" not in err


def test_without_peft_lora_says_what_to_install(lora_run, monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "peft" else object())
    with pytest.raises(SystemExit):
        train_main(["--lora-r", "8"])
    assert "--lora-r needs the peft package, which is not installed; pip install 'chatbot-zh[lora]'" in \
        capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(ValueError, match=r"adapter folder: loading it needs the peft package, which is not "
                                         r"installed: pip install 'chatbot-zh\[lora\]'"):
        load_model(lora_run[0] / "final" / "adapter")


def test_an_adapter_whose_base_is_not_in_the_offline_cache_is_one_line(lora_run, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run[0] / "final" / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path="nobody/base")))
    assert chat_main(["--model", str(adapter), "--device", "cpu", "--no-transcript"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: model folder not found: nobody/base; as a Hugging Face Hub id, the Hub is offline")


def test_resume_refuses_other_lora_settings_and_a_changed_base(lora_run, base_dir, corpus, tokenizer, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    shutil.copytree(lora_run[0] / "checkpoint-2", out / "checkpoint-2")
    args = ["--train", str(corpus), "--pretrained", str(base_dir), "--output-dir", str(out), "--quiet",
            "--resume", "auto", "--batch-size", "4"]
    assert train_main(args + ["--lora-r", "8"]) == 2
    assert (f"error: {out / 'checkpoint-2'} was trained on LoRA (r 4, alpha 8, dropout 0.05 on c_attn), but this "
            "run asks for LoRA (r 8, alpha 16, dropout 0.05 on c_attn): resume it with the same flags: --lora-r 4 "
            "--lora-alpha 8 --lora-dropout 0.05 --lora-targets c_attn") in capsys.readouterr().err
    assert train_main(args) == 2
    assert "but this run asks for all weights (no --lora-r)" in capsys.readouterr().err
    changed = tmp_path / "changed"  # other weights where the base was: a new save_pretrained over it, say
    torch.manual_seed(1)
    save_model(changed, GPT2LMHeadModel(tiny_config(tokenizer)), tokenizer, {})
    config = json.loads((out / "checkpoint-2" / "adapter_config.json").read_text())
    (out / "checkpoint-2" / "adapter_config.json").write_text(
        json.dumps(dict(config, base_model_name_or_path=str(changed))))
    assert train_main(args + ["--lora-r", "4"]) == 2
    assert f"the base model {changed} is not the one the LoRA adapter" in capsys.readouterr().err


def test_runs_without_lora_never_import_peft(corpus, model_config, vocab_file, tmp_path):
    code = ("import sys\nfrom chatbot.cli import train_main, chat_main\n"
            f"assert train_main(['--train', {str(corpus)!r}, '--config', {str(model_config)!r}, '--vocab', "
            f"{str(vocab_file)!r}, '--output-dir', {str(tmp_path / 'out')!r}, '--max-steps', '1', '--quiet']) == 0\n"
            "from chatbot.model.modeling import load_model\n"
            f"load_model({str(tmp_path / 'out' / 'final')!r})\n"
            "assert 'peft' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), CHATBOT_CACHE=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr
