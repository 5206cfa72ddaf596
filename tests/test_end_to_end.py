"""The whole product through its console scripts, as a user runs it (needs `pip install -e .`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name):
    path = shutil.which(name)
    assert path, f"{name} is not on PATH: install the project with pip install -e ."
    return path


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, CHATBOT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")


def run(args, env, **kw):
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_preprocess_train_eval_chat_and_bot(tmp_path, vocab_file, model_config, env):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗\n我很好", "今天天气很好\n谢谢"] * 10), encoding="utf-8")
    run([script("chatbot-preprocess"), str(corpus), "-o", str(tmp_path / "enc"), "--vocab", str(vocab_file),
         "--max-len", "64", "--quiet"], env)
    run([script("chatbot-train"), "--train", str(tmp_path / "enc"), "--valid", str(corpus),
         "--config", str(model_config), "--vocab", str(vocab_file), "--output-dir", str(tmp_path / "model"),
         "--max-steps", "4", "--quiet"], env)
    model = tmp_path / "model" / "final"
    run([script("chatbot-eval"), "--model", str(model), "--data", str(corpus), "--num-samples", "3",
         "--output", str(tmp_path / "report.json"), "--quiet"], env)
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["examples"] == 3
    chat = run([script("chatbot-chat"), "--model", str(model), "--seed", "1", "--max-len", "5",
                "--no-transcript", "--history-file", str(tmp_path / "hist")], env, input="你好\n今天天气\n")
    assert len(chat.stdout.splitlines()) == 2
    code = (f"from chatbot import ChatBot; "
            f"print(ChatBot.from_pretrained({str(model)!r}, device='cpu').reply('你好', seed=1))")
    bot = run([sys.executable, "-c", code], env)
    assert bot.stdout.strip() and "[" not in bot.stdout
    served = run([sys.executable, str(ROOT / "examples" / "bot.py"), "--model", str(model), "--seed", "1"],
                 env, input="alice: 你好\nbob: 在吗\nnot a message\nalice: 今天天气\n")
    assert [line.split(":")[0] for line in served.stdout.splitlines()] == ["alice", "bob", "alice"]
    assert "expected 'user: message'" in served.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "```bash\npython -m pytest -q\n```" in readme
    assert '"$PYTHON" -m pytest -q\n' in ci
