import importlib.util
import json
import os
import sys

import pytest

from chatbot.config import TrainConfig
from chatbot.train.loop import train


def tensorboard_run(tmp_path, vocab_file, monkeypatch) -> dict:
    """TrainConfig fields of a tiny run logging every step to TensorBoard in tmp_path/out."""
    monkeypatch.setenv("CHATBOT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗", "今天天气很好\n谢谢"] * 4), encoding="utf-8")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}))
    return dict(train=str(corpus), config=str(config), vocab=str(vocab_file),
                output_dir=str(tmp_path / "out"), batch_size=4, log_steps=1, quiet=True,
                report_to="tensorboard")


def logged_steps(out) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    return [e.step for e in events.Scalars("loss")]


def test_report_to_tensorboard_writes_events(tmp_path, vocab_file, monkeypatch):
    pytest.importorskip("tensorboard")  # the dev extra installs it
    train(TrainConfig(**tensorboard_run(tmp_path, vocab_file, monkeypatch), max_steps=2))
    assert logged_steps(tmp_path / "out") == [1, 2]


def test_report_to_needs_its_package_and_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"--report-to wandb needs the wandb package.*pip install wandb"):
        TrainConfig(report_to="wandb")
    with pytest.raises(ValueError, match=r"pip install 'chatbot-zh\[tensorboard\]'"):
        TrainConfig(report_to="tensorboard")


def test_no_events_unless_asked(tmp_path):
    from chatbot.train.monitor import MetricsLog

    log = MetricsLog(tmp_path, enabled=True)
    log.write({"step": 1, "loss": 2.0})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_window_averages_the_loss_over_scored_tokens():
    import torch

    from chatbot.train.monitor import Window

    window = Window.on(torch.device("cpu"))
    window.add(torch.tensor(2.0, requires_grad=True), labels=torch.tensor(3), tokens=torch.tensor(5))
    window.add(torch.tensor(0.5), labels=torch.tensor(1), tokens=torch.tensor(4))
    loss, tokens, tokens_per_s = window.totals()
    assert (loss, tokens) == ((2.0 * 3 + 0.5 * 1) / 4, 9)
    assert tokens_per_s > 0


def test_resumed_tensorboard_events_hold_each_step_once(tmp_path, vocab_file, monkeypatch):
    pytest.importorskip("tensorboard")
    common = dict(tensorboard_run(tmp_path, vocab_file, monkeypatch), max_steps=3, save_steps=1,
                  save_total_limit=0)
    train(TrainConfig(**common))
    train(TrainConfig(**common, resume=str(tmp_path / "out" / "checkpoint-1")))
    assert logged_steps(tmp_path / "out") == [1, 2, 3]  # not [1, 2, 3, 2, 3]


def dead_pipe():
    """A text stream whose reader is gone, as `| tee` after Ctrl-C leaves stdout and stderr."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    return open(write_fd, "w")


def test_writes_to_a_dead_pipe_are_dropped_then_go_to_the_null_device(monkeypatch):
    from chatbot.train.monitor import survive_closed_output

    stdout, stderr = dead_pipe(), dead_pipe()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    with survive_closed_output():
        print("held in stdout's buffer: it fails when the block flushes it on the way out")
        print("line-buffered, it fails at once", file=sys.stderr, flush=True)
    assert (sys.stdout, sys.stderr) == (stdout, stderr)
    for stream in (stdout, stderr):
        assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
        stream.write("later writes go nowhere\n")
        stream.flush()
