import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast, GPT2LMHeadModel

from chatbot.cli import train_main
from chatbot.config import TrainConfig
from chatbot.train.loop import train
from chatbot.train.optim import lr_factor
from conftest import tiny_config

pytestmark = pytest.mark.transformers_api

ROOT = Path(__file__).resolve().parents[1]
DIALOGUES = ["你好\n你好吗\n我很好", "今天天气很好\n谢谢", "你好吗\n我很好\n谢谢", "今天\n天气好"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n\n".join(DIALOGUES * 5), encoding="utf-8")  # 20 dialogues
    return path


@pytest.fixture
def model_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}))
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATBOT_CACHE", str(tmp_path / "cache"))


def run(corpus, model_config, vocab_file, out, **overrides):
    fields = dict(train=str(corpus), config=str(model_config), vocab=str(vocab_file), output_dir=str(out),
                  epochs=2, batch_size=4, lr=1e-3, quiet=True, log_steps=1)
    fields.update(overrides)
    return train(TrainConfig(**fields))


def losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_train_writes_checkpoints_best_and_final(corpus, model_config, vocab_file, tmp_path):
    result = run(corpus, model_config, vocab_file, tmp_path / "out", valid_ratio=0.2, save_total_limit=1)
    out = tmp_path / "out"
    assert result.exit_code == 0 and result.steps == 8  # 16 train examples / batch 4 x 2 epochs
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoint-8", "final", "metrics.jsonl"]
    model_files = ["README.md", "chat_template.jinja", "config.json", "generation_config.json",
                   "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.json",
                   "vocab.txt"]
    assert sorted(os.listdir(out / "final")) == model_files
    assert sorted(os.listdir(out / "checkpoint-8")) == sorted(model_files + ["trainer_state.pt"])
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(out).values()) and len(losses(out)) == 8
    assert result.best_valid_ppl is not None and result.best_valid_ppl < 30  # 22-token vocab: chance is 22
    model = GPT2LMHeadModel.from_pretrained(out / "final")
    tokenizer = BertTokenizerFast.from_pretrained(out / "final")
    assert len(tokenizer) == model.config.vocab_size == 22
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (2, 3, 0)
    assert json.loads((out / "final" / "training_args.json").read_text())["max_len"] == 64
    best_card, final_card = ((out / d / "README.md").read_text(encoding="utf-8") for d in ("best", "final"))
    assert f"| validation perplexity | {result.best_valid_ppl:.2f} |" in best_card
    assert "| optimizer steps | 8 |" in final_card


def test_resume_continues_exactly(corpus, model_config, vocab_file, tmp_path):
    straight = tmp_path / "straight"
    run(corpus, model_config, vocab_file, straight, max_steps=8, save_steps=4, epochs=3, save_total_limit=0)
    resumed = tmp_path / "resumed"
    run(corpus, model_config, vocab_file, resumed, max_steps=8, save_steps=4, epochs=3,
        resume=str(straight / "checkpoint-4"))
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)


def test_resume_auto_and_mid_epoch(corpus, model_config, vocab_file, tmp_path):
    straight = tmp_path / "straight"
    run(corpus, model_config, vocab_file, straight, save_steps=3, save_total_limit=0)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")  # step 3 is mid-epoch (5 per epoch)
    result = run(corpus, model_config, vocab_file, resumed, save_steps=3, resume="auto")
    assert result.steps == 10
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == list(range(4, 11))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)


def test_fine_tune_from_pretrained_folder(corpus, vocab_file, tokenizer, tmp_path):
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained"
    model = GPT2LMHeadModel(tiny_config(tokenizer, bos_token_id=50256, eos_token_id=50256))
    model.save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    result = train(TrainConfig(train=str(corpus), pretrained=str(pretrained),
                               output_dir=str(tmp_path / "out"), epochs=1, batch_size=4, quiet=True,
                               freeze="layers:1"))
    tuned = GPT2LMHeadModel.from_pretrained(tmp_path / "out" / "final")
    assert (tuned.config.bos_token_id, tuned.config.eos_token_id) == (2, 3)
    # Embeddings and block 0 are frozen; block 1 trained.
    assert torch.equal(tuned.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(tuned.transformer.wte.weight, model.transformer.wte.weight)
    trained_block = tuned.transformer.h[1].attn.c_attn.weight
    assert not torch.equal(trained_block, model.transformer.h[1].attn.c_attn.weight)
    assert result.steps == 5


def test_pretrained_vocab_mismatch_needs_resize(corpus, tokenizer, tmp_path, capsys):
    pretrained = tmp_path / "pretrained"
    GPT2LMHeadModel(tiny_config(tokenizer, vocab_size=10)).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    args = ["--train", str(corpus), "--pretrained", str(pretrained), "--output-dir", str(tmp_path / "out"),
            "--epochs", "1", "--quiet"]
    assert train_main(args) == 2
    assert "tokenizer has 22 tokens but the model's embedding has 10 rows" in capsys.readouterr().err
    assert train_main(args + ["--resize-embeddings"]) == 0
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "out" / "final").config.vocab_size == 22


@pytest.mark.parametrize("extra, message", [
    (["--train", "missing.txt"], "corpus not found: missing.txt"),
    (["--config", "nope.json"], "model config not found: nope.json"),
    (["--max-len", "65"], "--max-len 65 exceeds the model's n_positions (64)"),
    (["--resume", "."], "is not a training checkpoint"),
    (["--pretrained", "."], "is not a complete model folder: missing config.json"),
])
def test_bad_input_is_one_clear_error(corpus, model_config, vocab_file, tmp_path, capsys, extra, message):
    base = ["--train", str(corpus), "--config", str(model_config), "--vocab", str(vocab_file),
            "--output-dir", str(tmp_path / "out"), "--quiet"]
    assert train_main(base + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_dataset_after_filtering(model_config, vocab_file, tmp_path, capsys):
    corpus = tmp_path / "lonely.txt"
    corpus.write_text("一句\n\n又一句\n", encoding="utf-8")
    assert train_main(["--train", str(corpus), "--config", str(model_config), "--vocab", str(vocab_file),
                       "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no usable dialogues" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--lr", "-1"), ("--freeze", "layers"),
                                         ("--device", "gpu"), ("--warmup-ratio", "1.5")])
def test_bad_flag_values_fail_before_work(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        train_main([flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_help_lists_familiar_flags(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--epochs", "--batch-size", "--lr", "--max-len", "--resume", "--pretrained", "--grad-accum"):
        assert flag in out


@pytest.mark.parametrize("step, factor", [(0, 0.2), (3, 0.8), (4, 1.0), (9, 0.5), (14, 0.0)])
def test_lr_warmup_then_linear_decay(step, factor):
    assert lr_factor(step, warmup=4, total=14, kind="linear") == pytest.approx(factor)


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(corpus, model_config, vocab_file, tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from chatbot.cli import train_main; sys.exit(train_main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--train", str(corpus), "--config", str(model_config), "--vocab",
         str(vocab_file), "--output-dir", str(out), "--epochs", "100000", "--batch-size", "4", "--quiet",
         "--log-steps", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "--resume auto" in output and "Traceback" not in output
    checkpoints = [p for p in out.iterdir() if p.name.startswith("checkpoint-")]
    assert checkpoints and all((p / "trainer_state.pt").is_file() for p in checkpoints)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_train_reports_the_unk_rate_and_warns_when_high(model_config, vocab_file, tmp_path, capsys):
    corpus = tmp_path / "traditional.txt"
    corpus.write_text("\n\n".join(["妳好\n謝謝妳", "今天天氣很好\n謝謝"] * 4), encoding="utf-8")
    assert train_main(["--train", str(corpus), "--config", str(model_config), "--vocab", str(vocab_file),
                       "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    # 4 x (8 + 11) tokens with [CLS] and [SEP]s; 妳 謝 氣 (4 + 3 per pair) are not in the tiny vocabulary.
    assert f"[UNK] rate of {corpus}: 36.8% (28 of 76 tokens)" in err
    assert "warning: 36.8% of the tokens are [UNK] (more than 2%)" in err and "--vocab-out" in err
