"""What a plain `chatbot-chat` loads: model/best, else model/final; with neither, one line at once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.config import ChatConfig, default_model

ROOT = Path(__file__).resolve().parents[1]
# chat_main as the console script runs it, then the heavy modules it imported.
CHAT = ("import sys\nfrom chatbot.cli import chat_main\ncode = chat_main(['--no-transcript'])\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\nsys.exit(code)")


def chat(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHAT], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), input="你好\n")


@pytest.mark.parametrize("folders, expected", [
    (["best", "final", "checkpoint-9"], "model/best"),
    (["final", "checkpoint-9"], "model/final"),
    (["best"], "model/best"),
])
def test_best_validation_model_first_then_final(tmp_path, monkeypatch, folders, expected):
    for name in folders:
        (tmp_path / "model" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ChatConfig().model_path() == default_model() == expected
    assert ChatConfig(model="elsewhere/final").model_path() == "elsewhere/final"


NO_MODEL = "error: there is no model/best or model/final in {cwd}"


@pytest.mark.parametrize("checkpoints, message", [
    ([], ". Train a model with `chatbot-train` (it writes them), or give chatbot-chat --model DIR|ID: a folder "
         "written by chatbot-train or `save_pretrained`, or a Hugging Face Hub id (org/name)\n"),
    ([9, 80, 120], ", only checkpoints (a training that has not finished?). Chat with the newest: "
                   "chatbot-chat --model model/checkpoint-120; or finish the training: chatbot-train --resume "
                   "auto\n"),
])
def test_no_model_is_one_line_before_torch_loads(tmp_path, checkpoints, message):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "metrics.jsonl").write_text("")
    for step in checkpoints:
        (tmp_path / "model" / f"checkpoint-{step}").mkdir()
    done = chat(tmp_path)
    assert done.returncode == 2 and done.stdout == "[]\n"  # no torch, no transformers
    assert done.stderr == NO_MODEL.format(cwd=tmp_path) + message
