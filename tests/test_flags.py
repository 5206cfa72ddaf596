import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.cli import chat_parser, eval_parser, train_parser
from chatbot.config import ChatConfig, EvalConfig, TrainConfig
from chatbot.flags import parse_options
from chatbot.options import SamplingOptions

ROOT = Path(__file__).resolve().parents[1]


def parse_train(argv):
    return parse_options(train_parser(), argv, TrainConfig)[0]


@pytest.mark.parametrize("argv", [["--batch-size", "8", "--max-len", "64"],
                                  ["--batch_size", "8", "--max_len=64"]])
def test_hyphen_and_underscore_spellings_set_the_same_field(argv):
    cfg = parse_train(argv)
    assert (cfg.batch_size, cfg.max_len) == (8, 64)


@pytest.mark.parametrize("suffix, text", [
    (".json", '{"batch_size": 4, "lr": 0.0001, "speaker_ids": true, "output-dir": "runs/a"}'),
    (".yaml", "batch_size: 4\nlr: 0.0001\nspeaker_ids: true\noutput-dir: runs/a\n"),
])
def test_config_file_sets_options_and_flags_override_it(tmp_path, suffix, text):
    path = tmp_path / ("options" + suffix)
    path.write_text(text, encoding="utf-8")
    cfg = parse_train(["--config-file", str(path), "--lr", "0.002"])
    assert (cfg.batch_size, cfg.lr, cfg.speaker_ids, cfg.output_dir) == (4, 0.002, True, "runs/a")
    assert parse_train(["--config-file", str(path), "--no-speaker-ids"]).speaker_ids is False


def test_training_args_json_reruns_the_same_configuration_but_not_its_overwrite(tmp_path):
    cfg = TrainConfig(batch_size=4, lr=1e-4, max_len=64, valid_ratio=0.1, warmup_steps=3, overwrite=True)
    saved = tmp_path / "training_args.json"
    # What a run writes: its options plus values it derived.
    saved.write_text(json.dumps(dict(cfg.recorded(), source="configs/tiny.json (random init)",
                                     layout="chitchat", valid_ppl=9.5)))
    assert parse_train(["--config-file", str(saved)]) == dataclasses.replace(cfg, overwrite=False)


@pytest.mark.parametrize("text, message", [
    ('{"batch_sise": 4}', "unknown option(s) batch_sise; known: train, valid"),
    ('{"batch_size": 0}', "--batch-size must be >= 1, got 0"),
    ('{"lr": "fast"}', "argument --lr: invalid float value: 'fast'"),
    ("[1, 2]", "expected a mapping of option names to values, got list"),
    ("{oops", "not valid JSON"),
])
def test_bad_config_file_is_one_error_naming_the_problem(tmp_path, capsys, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        parse_train(["--config-file", str(path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_chat_and_eval_share_the_sampling_flags_and_reply_length_aliases():
    for parser, cls in ((chat_parser(), ChatConfig), (eval_parser(), EvalConfig)):
        argv = ["--max-len", "9", "--repetition-penalty", "1.2", "--no-repeat-ngram", "2", "--min-len", "3"]
        _, options = parse_options(parser, argv, cls, SamplingOptions)
        assert options == SamplingOptions(max_new_tokens=9, repetition_penalty=1.2, no_repeat_ngram_size=2,
                                          min_new_tokens=3)
        assert parse_options(parser, ["--max-new-tokens", "7"], cls, SamplingOptions)[1].max_new_tokens == 7


def test_cross_check_names_the_flags_as_typed(capsys):
    with pytest.raises(SystemExit):
        parse_options(chat_parser(), ["--min-new-tokens", "9", "--max_new_tokens", "5"], ChatConfig,
                      SamplingOptions)
    assert "--min-new-tokens (9) must be <= --max-new-tokens (5)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["chatbot-train", "chatbot-preprocess", "chatbot-chat", "chatbot-eval",
                                     "chatbot-serve"])
def test_help_does_not_import_torch(command):
    main = command.replace("chatbot-", "") + "_main"
    code = (f"import sys\nfrom chatbot.cli import {main}\n"
            f"try:\n    {main}(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted({'torch', 'transformers', 'fastapi'} & set(sys.modules))\n"
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {command}") and "--config-file" in out.stdout
