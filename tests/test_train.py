import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertTokenizerFast, GPT2LMHeadModel

from chatbot.cli import train_main
from chatbot.config import TrainConfig
from chatbot.train.checkpoint import TrainState
from chatbot.train.loop import stop_reason, train
from chatbot.train.optim import lr_factor
from conftest import TRAIN_DIALOGUES as DIALOGUES, tiny_config

pytestmark = [pytest.mark.transformers_api, pytest.mark.usefixtures("chatbot_cache")]

ROOT = Path(__file__).resolve().parents[1]


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
                   "vocab.txt", "weights.sha256"]
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


# LoRA from a config: the random weights it adapts are the run's base/, found again from the checkpoint.
@pytest.mark.parametrize("lora", [{}, {"lora_r": 4, "lora_targets": "c_attn,c_fc"}], ids=["full", "lora"])
def test_resume_continues_exactly(corpus, model_config, vocab_file, tmp_path, lora):
    straight = tmp_path / "straight"
    run(corpus, model_config, vocab_file, straight, max_steps=8, save_steps=4, epochs=3, save_total_limit=0,
        **lora)
    resumed = tmp_path / "resumed"
    run(corpus, model_config, vocab_file, resumed, max_steps=8, save_steps=4, epochs=3,
        resume=str(straight / "checkpoint-4"), **lora)
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == [5, 6, 7, 8]
    assert b == {step: a[step] for step in b}  # bit for bit
    final = [load_file(out / "final" / "model.safetensors") for out in (straight, resumed)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])


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


def rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_the_metrics_rows_past_its_checkpoint(corpus, model_config, vocab_file, tmp_path,
                                                           capsys):
    out = tmp_path / "out"
    run(corpus, model_config, vocab_file, out, max_steps=4, save_steps=2, save_total_limit=0)
    first = losses(out)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # the row a SIGKILL cut short
    capsys.readouterr()
    run(corpus, model_config, vocab_file, out, max_steps=4, save_steps=2, resume=str(out / "checkpoint-2"))
    assert capsys.readouterr().err == (f"dropped 3 rows past step 2 from {out / 'metrics.jsonl'}: "
                                       "this run writes those steps again\n")
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
    assert losses(out) == pytest.approx(first, rel=1e-5, abs=1e-6)
    (out / ".metrics.jsonl.tmp").write_text('{"step": 1, "loss"')  # a rewrite a SIGKILL cut short
    run(corpus, model_config, vocab_file, out, max_steps=5, resume="auto")  # from the newest: nothing to drop
    assert capsys.readouterr().err == ""
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4, 5]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def checkpoint_steps(out):
    return sorted(int(p.name.split("-")[1]) for p in Path(out).glob("checkpoint-*"))


@pytest.mark.parametrize("cadence, steps", [
    (dict(save_minutes=0), [20]),  # 4 epochs of 5 steps: not one checkpoint per epoch, one at the end
    (dict(save_minutes=0, save_steps=6), [6, 12, 18, 20]),
    # Due at every logged step: a step takes longer than 60 ns.
    (dict(save_minutes=1e-9, log_steps=5), [5, 10, 15, 20]),
])
def test_checkpoints_by_steps_and_minutes_not_by_epoch(corpus, model_config, vocab_file, tmp_path, cadence,
                                                       steps):
    fields = dict(dict(epochs=4, save_total_limit=0), **cadence)
    run(corpus, model_config, vocab_file, tmp_path / "out", **fields)
    assert checkpoint_steps(tmp_path / "out") == steps


@pytest.mark.parametrize("valid_ratio, valid, examples, expected", [
    (None, None, 199, 0.0),  # too few to hold some out
    (None, None, 200, 0.05),
    (None, None, 100_000, 0.01),  # at most 1,000 examples
    (None, "valid.txt", 10_000, 0.0),
    (0.0, None, 10_000, 0.0),
    (0.2, None, 10, 0.2),
])
def test_validation_is_held_out_of_train_by_default(valid_ratio, valid, examples, expected):
    cfg = TrainConfig(train="corpus.txt", valid=valid, valid_ratio=valid_ratio)
    assert cfg.holdout_ratio(examples) == expected


@pytest.fixture
def tables(monkeypatch):
    """The rows of each table chatbot-train prints, by title."""
    printed = {}
    monkeypatch.setattr("chatbot.train.loop.print_table",
                        lambda title, rows: printed.update({title: dict(rows)}))
    return printed


def test_train_alone_holds_out_validation_and_says_so(model_config, vocab_file, tmp_path, tables):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n\n".join(DIALOGUES * 50), encoding="utf-8")  # 200 dialogues
    out = tmp_path / "out"
    run(corpus, model_config, vocab_file, out, max_steps=2, quiet=False)
    plan = tables["chatbot-train"]
    assert plan["valid examples"] == ("10 (5.0% held out of the training data, by default; "
                                      "--valid-ratio 0 for none)")
    assert plan["train examples / tokens"].startswith("190 / ")
    assert plan["early stopping"] == "after 3 validations without improvement"
    assert plan["checkpoints"] == "every 10 min, at the end; newest 2 kept"
    assert json.loads((out / "best" / "training_args.json").read_text())["valid_ratio"] == 0.05
    assert tables["training finished"]["chat with it"] == f"chatbot-chat --model {out / 'best'}"


def test_small_corpus_alone_has_no_validation_and_says_why(corpus, model_config, vocab_file, tmp_path,
                                                           tables):
    out = tmp_path / "out"
    run(corpus, model_config, vocab_file, out, max_steps=2, quiet=False, save_steps=1)
    plan = tables["chatbot-train"]
    assert plan["valid examples"] == ("none: 20 examples are too few to hold some out (< 200); "
                                      "give --valid FILE or --valid-ratio F")
    assert plan["early stopping"] == "off"
    assert plan["checkpoints"] == "every 1 steps, every 10 min, at the end; newest 2 kept"
    assert not (out / "best").exists()
    assert tables["training finished"]["chat with it"] == f"chatbot-chat --model {out / 'final'}"


def test_early_stopping_is_on_by_default():
    state = TrainState(step=30, epoch=6, bad_evals=3)
    run_ = SimpleNamespace(cfg=TrainConfig(), state=state, total_steps=90, device=torch.device("cpu"))
    assert stop_reason(run_, SimpleNamespace(signum=None)) == "no improvement in 3 validations"
    state.bad_evals = 2
    assert stop_reason(run_, SimpleNamespace(signum=None)) is None
