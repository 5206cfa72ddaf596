import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.cli import chat_parser, eval_parser, train_parser
from chatbot.config import ChatConfig, EvalConfig, PreprocessConfig, TrainConfig
from chatbot.flags import build_parser, parse_options
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


def parse_chat(argv):
    return parse_options(chat_parser(), argv, ChatConfig, SamplingOptions)


@pytest.mark.parametrize("argv, config, options", [
    # GPT2-chitchat's README: python interact.py --no_cuda --model_path model_epoch40_50w
    (["--no_cuda", "--model_path", "m"], dict(model="m", device="cpu"), {}),
    (["--model_path", "m", "--device", "cuda:0", "--max_history_len", "5"],
     dict(model="m", device="cuda:0", max_history=5), {}),
    (["--topk", "3", "--topp", "0.9", "--repetition_penalty", "1.2", "--max_len", "9", "--temperature", "0.7"],
     {}, dict(top_k=3, top_p=0.9, repetition_penalty=1.2, max_new_tokens=9, temperature=0.7)),
    # interact_mmi.py
    (["--dialogue_model_path", "d", "--mmi_model_path", "r", "--save_samples_path", "s", "--seed", "1"],
     dict(model="d", mmi_model="r", log_dir="s", seed=1), {}),
])
def test_gpt2_chitchat_interact_flags_set_our_options(argv, config, options):
    assert parse_chat(argv) == (dataclasses.replace(ChatConfig(), **config),
                                dataclasses.replace(SamplingOptions(), **options))


@pytest.mark.parametrize("argv, top_p", [(["--topp", "0"], 1.0), (["--topp=0.5"], 0.5), (["--top-p", "0"], 0.0)])
def test_gpt2_chitchat_topp_0_means_off_but_top_p_0_means_greedy(argv, top_p):
    assert parse_chat(argv)[1].top_p == top_p


def test_gpt2_chitchat_train_flags_set_our_options():
    argv = ("--epochs 40 --batch_size 8 --train_path data/train.txt --no_cuda --gradient_accumulation_steps 4 "
            "--lr 2.6e-5 --log_step 5 --max_grad_norm 2.0 --save_model_path out --pretrained_model p "
            "--vocab_path v.txt --model_config c.json --warmup_steps 7 --seed 1 --num_workers 2 --patience 3 "
            "--max_len 150 --train_mmi").split()
    assert parse_train(argv) == TrainConfig(
        epochs=40, batch_size=8, train="data/train.txt", device="cpu", grad_accum=4, lr=2.6e-5, log_steps=5,
        max_grad_norm=2.0, output_dir="out", pretrained="p", vocab="v.txt", config="c.json", warmup_steps=7,
        seed=1, num_workers=2, patience=3, max_len=150, reverse=True)
    old = "--train_raw_path t.txt --gradient_accumulation 2 --dialogue_model_output_path d".split()
    assert parse_train(old) == TrainConfig(train="t.txt", grad_accum=2, output_dir="d")


def test_gpt2_chitchat_preprocess_flags_set_our_options():
    parser = build_parser("chatbot-preprocess", "", PreprocessConfig)
    (cfg,) = parse_options(parser, ["c.txt", "--save_path", "data/train.pkl", "--vocab_path", "v.txt"],
                           PreprocessConfig)
    assert (cfg.corpus, cfg.output, cfg.vocab) == (["c.txt"], "data/train.pkl", "v.txt")


@pytest.mark.parametrize("parser, argv, message", [
    (chat_parser, ["--top_kk", "5"], "unknown flag --top_kk (did you mean --top-k?)"),
    (chat_parser, ["--temprature=0.7"], "unknown flag --temprature (did you mean --temperature?)"),
    (chat_parser, ["--maxhistory", "2"], "unknown flag --maxhistory (did you mean --max-history?)"),
    (chat_parser, ["--zzz"], "unknown flag --zzz"),
    (chat_parser, ["hello"], "unexpected argument 'hello'"),
    (chat_parser, ["--log_path", "data/interact.log"], "--log_path is GPT2-chitchat's log file; chatbot prints to "
                                                       "the terminal (chatbot-train also writes "
                                                       "OUTPUT_DIR/metrics.jsonl): drop it"),
    (chat_parser, ["--batch_size", "5"], "--batch_size is GPT2-chitchat's number of MMI candidates when "
                                         "chatting; here use --candidates N with --mmi-model DIR"),
    (train_parser, ["--val_num", "100"], "--val_num holds out a number of examples in GPT2-chitchat; here use "
                                         "--valid-ratio SHARE (e.g. 0.01) or --valid FILE"),
    (train_parser, ["--gradient_acumulation_steps", "4"],
     "unknown flag --gradient_acumulation_steps (did you mean --grad-accum?)"),
])
def test_unknown_flag_is_one_error_line_and_a_short_usage(capsys, parser, argv, message):
    parser = parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: {message}\n"
                                       f"usage: {parser.prog} [options]; see {parser.prog} --help\n")


def test_preprocess_usage_line_names_the_corpus_argument(capsys):
    with pytest.raises(SystemExit):
        build_parser("chatbot-preprocess", "", PreprocessConfig).parse_args(["--train_path", "t", "-o", "d"])
    assert capsys.readouterr().err.splitlines() == [
        "error: --train_path is the corpus: chatbot-preprocess takes corpus files as arguments "
        "(chatbot-preprocess data/train.txt -o DIR), chatbot-train as --train",
        "usage: chatbot-preprocess [options] CORPUS ...; see chatbot-preprocess --help"]


def test_help_lists_aliases_in_one_paragraph_not_beside_the_flags():
    text = " ".join(chat_parser().format_help().split())  # unwrapped
    options, aliases = text.split("Other names, most of them GPT2-chitchat's: ")
    assert "--topk" not in options and "--max-len" not in options.replace("(--max-len is", "")
    assert aliases.startswith("--model-path for --model, --dialogue-model-path for --model, --no-cuda for "
                              "--device cpu, --max-history-len for --max-history,")
    assert "--topk for --top-k, --topp for --top-p," in aliases
