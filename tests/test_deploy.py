"""chatbot-export: CTranslate2 and ONNX Runtime exports reply with the ids ChatBot replies with."""

import importlib.util
import json
import os
import subprocess

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from chatbot.bot import ChatBot
from chatbot.cli import export_main
from chatbot.deploy.export import export_model
from chatbot.generate.sampling import generate_tokens
from chatbot.model.modeling import load_model, save_model
from chatbot.options import SamplingOptions
from chatbot.tokenization import banned_token_ids
from tests.conftest import tiny_config

CLS, SEP = 2, 3
HISTORY, TEXT = ["你好", "你好吗"], "今天天气很好"
# Greedy, as ChatBot(temperature=0) samples, with its bans, stop at [SEP] and min_new_tokens=1; the
# no-repeat-ngram default (3) off, since CTranslate2 would count the prompt's n-grams too.
GREEDY = SamplingOptions(temperature=0, no_repeat_ngram_size=0, max_new_tokens=12)
needs_ct2 = pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None,
                               reason="ctranslate2 is not installed: pip install 'chatbot-zh[ct2]'")
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="onnx, onnxscript or onnxruntime is not installed: pip install 'chatbot-zh[onnx]'")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A model whose greedy reply varies and ends at [SEP] (initializer_range 0.5), saved as chatbot-train
    saves."""
    torch.manual_seed(1)
    model = GPT2LMHeadModel(tiny_config(tokenizer, initializer_range=0.5)).eval()
    return save_model(tmp_path_factory.mktemp("m") / "model", model, tokenizer, {"max_len": 64})


def chatbot_reply(folder):
    """(prompt ids, reply ids, reply text) of ChatBot answering TEXT after HISTORY greedily."""
    bot = ChatBot.from_pretrained(folder, device="cpu", dtype="fp32", **vars(GREEDY))
    prompt = bot.prompt(TEXT, HISTORY, max_new_tokens=GREEDY.max_new_tokens).input_ids
    ids = [i for (i,) in generate_tokens(bot._forward.model, prompt, eos_id=bot.tokenizer.sep_token_id,
                                         banned_ids=banned_token_ids(bot.tokenizer), **vars(GREEDY))]
    return prompt, ids, bot.reply(TEXT, history=HISTORY)


EXPECTED = [8, 16, 16, 16, 16, 16, 16, 16, 16, 7, SEP]


@needs_ct2
@pytest.mark.parametrize("quantization", ["fp32", "int8"])
def test_ct2_greedy_reply_is_chatbots(model_dir, tmp_path, quantization):
    from chatbot.deploy.ct2 import generate_kwargs, load_generator

    out = export_model(model_dir, tmp_path / "ct2", to="ct2", quantization=quantization)
    prompt, ids, text = chatbot_reply(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(out)  # the export carries its tokenizer
    result = load_generator(out, threads=1).generate_batch(
        [tokenizer.convert_ids_to_tokens(prompt)], **generate_kwargs(tokenizer, GREEDY))[0]
    assert result.sequences_ids[0] + [SEP] == ids == EXPECTED  # CTranslate2 leaves out the end token
    assert tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True) == text
    assert json.loads((out / "config.json").read_text())["eos_token"] == "[SEP]"
    assert sorted(p.name for p in out.iterdir()) == [
        "chat_template.jinja", "config.json", "export.json", "generation_config.json", "model.bin",
        "tokenizer.json", "tokenizer_config.json", "vocabulary.json"]


@needs_onnx
@pytest.mark.parametrize("quantization", ["fp32", pytest.param("int8", marks=pytest.mark.slow)])
def test_onnx_greedy_reply_is_chatbots(model_dir, tmp_path, tokenizer, quantization):
    from chatbot.deploy.ort import OnnxModel

    out = export_model(model_dir, tmp_path / "onnx", to="onnx", quantization=quantization)
    prompt, ids, _ = chatbot_reply(model_dir)
    reply = OnnxModel(out, threads=1).generate_ids(prompt, eos_id=tokenizer.sep_token_id,
                                                   banned_ids=banned_token_ids(tokenizer), options=GREEDY)
    assert ids == EXPECTED
    # ONNX Runtime's int8 also rounds the activations: the tenth token, whose two best logits are
    # close in this random model, changes.
    assert reply == ids if quantization == "fp32" else reply[:9] == ids[:9]


def old_folder(folder):
    """`folder` with the tokenizer_config.json that save_model wrote before issue 19."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("bos_token", "eos_token", "model_input_names"):
        del config[key]
    config["extra_special_tokens"] = config.pop("additional_special_tokens")
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path.read_bytes()


def test_an_old_folder_is_repaired_in_memory_and_on_saving_not_on_disk(tiny_model_dir, tmp_path):
    before = old_folder(tiny_model_dir)
    model, tokenizer, args = load_model(tiny_model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("[CLS]", "[SEP]")
    assert list(tokenizer("你好")) == ["input_ids", "attention_mask"]
    assert tokenizer("你好")["input_ids"] == tokenizer.encode("你好") == [CLS, 7, 8, SEP]  # as before
    assert (tiny_model_dir / "tokenizer_config.json").read_bytes() == before
    config = json.loads((save_model(tmp_path / "again", model, tokenizer, args) / "tokenizer_config.json")
                        .read_text(encoding="utf-8"))
    assert (config["eos_token"], config["additional_special_tokens"]) == ("[SEP]", ["[speaker1]", "[speaker2]"])


@needs_ct2
def test_export_command_converts_an_old_folder_and_replaces_only_its_own_output(tiny_model_dir, tmp_path,
                                                                                capsys):
    old_folder(tiny_model_dir)  # CTranslate2's own converter would write eos_token null from it
    out = tmp_path / "ct2"
    assert export_main(["--to", "ct2", "--model", str(tiny_model_dir), "-o", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["eos_token"] == "[SEP]"
    assert json.loads((out / "export.json").read_text()) == {
        "to": "ct2", "runtime": "CTranslate2", "quantization": "int8", "source": str(tiny_model_dir)}
    capsys.readouterr()
    assert export_main(["--to", "ct2", "--model", str(tiny_model_dir), "-o", str(out)]) == 2
    assert "already holds a chatbot-export output; pass --overwrite" in capsys.readouterr().err
    assert export_main(["--to", "ct2", "--model", str(tiny_model_dir), "-o", str(out), "--overwrite"]) == 0
    assert export_main(["--to", "ct2", "--model", str(tiny_model_dir), "-o", str(tiny_model_dir),
                        "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "holding other files" in err and "Traceback" not in err


@pytest.mark.parametrize("to", ["ct2", "onnx"])
def test_a_cdial_gpt_model_is_refused_with_the_reason(cdial_dir, tmp_path, capsys, to):
    assert export_main(["--to", to, "--model", str(cdial_dir), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    why = "CTranslate2 has no converter for it" if to == "ct2" else "OpenAI GPT has no KV cache to export"
    assert err.startswith("error: ") and "this one is openai-gpt" in err and why in err
    assert not (tmp_path / "out").exists()


def test_a_speaker_ids_model_is_refused(tiny_model, tokenizer, tmp_path):
    folder = save_model(tmp_path / "m", tiny_model, tokenizer, {"speaker_ids": True, "max_len": 32})
    with pytest.raises(ValueError, match="reads speaker token_type_ids"):
        export_model(folder, tmp_path / "out", to="ct2")


def test_export_needs_to_and_output(capsys):
    with pytest.raises(SystemExit) as e:
        export_main(["--model", "m"])
    assert e.value.code == 2
    assert "the following arguments are required: --to, -o/--output" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CHATBOT_TRANSFORMERS4_PYTHON"),
                    reason="set CHATBOT_TRANSFORMERS4_PYTHON to a python with transformers 4.x installed")
def test_transformers_4_reads_the_folder_as_transformers_5_does(tiny_model_dir):
    script = ("import sys; from transformers import AutoTokenizer\n"
              "t = AutoTokenizer.from_pretrained(sys.argv[1]); ids = t('你好，ok ok！[speaker1]')['input_ids']\n"
              "print(ids, t.decode(ids, skip_special_tokens=True), t.eos_token, t.bos_token,"
              " t.model_input_names)")
    run = subprocess.run([os.environ["CHATBOT_TRANSFORMERS4_PYTHON"], "-c", script, str(tiny_model_dir)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         check=True)
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = hf("你好，ok ok！[speaker1]")["input_ids"]
    assert ids == [2, 7, 8, 20, 16, 19, 16, 19, 21, 5, 3]
    assert run.stdout.strip() == f"{ids} 你好，ok ok！ [SEP] [CLS] ['input_ids', 'attention_mask']"
