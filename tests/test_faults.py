"""Faults and hostile input at the edges: every command ends with one `error:` line naming the path
and the cause, exit code 2, no traceback, and every file that existed before is byte-identical."""

import builtins
import errno
import json
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatbot.train.checkpoint import STATE_FILE
from chatbot.cli import eval_main, preprocess_main, train_main
from chatbot.data.dataset import cache_key
from chatbot.model.modeling import load_model

# Raw corpora are encoded into each test's own cache (snapshot() leaves it out).
pytestmark = pytest.mark.usefixtures("chatbot_cache")


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and "cache" not in p.parts}


def one_error(capsys) -> str:
    """The command's stderr must be exactly one `error:` line (progress lines aside), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# `"n_layer": "two"`: transformers' strict configs (newer 5.x) reject the type with their own message;
# transformers 5.3 lets it through to chatbot's check_gpt2_config. Either way one line names field and value.
WRONG_TYPE = r"(Validation error for field 'n_layer': TypeError: Field 'n_layer' expected int|" \
             r"n_layer must be a positive integer, got 'two')"


def says(line: str, message: str | re.Pattern) -> bool:
    return bool(message.search(line)) if isinstance(message, re.Pattern) else message in line


def train_args(corpus, model_config, vocab_file, out, *extra):
    return ["--train", str(corpus), "--config", str(model_config), "--vocab", str(vocab_file),
            "--output-dir", str(out), "--quiet", "--batch-size", "4", "--epochs", "1", *extra]


# --- chatbot-preprocess ----------------------------------------------------------------------------

@pytest.mark.parametrize("output, message", [
    ("keep", "is a folder holding other files (notes.txt)"),
    ("afile", "is an existing file"),
    (".", "is the folder you are in"),
    ("..", "is the folder you are in"),
    ("previous", "already holds a chatbot-preprocess output; pass --overwrite"),
])
def test_preprocess_never_replaces_what_is_not_its_own(tmp_path, corpus, vocab_file, capsys, monkeypatch,
                                                       output, message):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("precious")
    (tmp_path / "afile").write_text("precious")
    (tmp_path / "sub").mkdir()
    assert preprocess_main([str(corpus), "--vocab", str(vocab_file), "--output", str(tmp_path / "previous"),
                            "--quiet"]) == 0
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path / "sub")
    target = output if output in (".", "..") else str(tmp_path / output)
    assert preprocess_main([str(corpus), "--vocab", str(vocab_file), "--output", target, "--quiet"]) == 2
    assert message in one_error(capsys)
    assert snapshot(tmp_path) == before
    assert preprocess_main([str(corpus), "--vocab", str(vocab_file), "--output", str(tmp_path / "previous"),
                            "--quiet", "--overwrite"]) == 0


def test_vocab_out_never_overwrites_a_corpus(tmp_path, corpus, capsys):
    before = snapshot(tmp_path)
    assert preprocess_main([str(corpus), "--vocab-out", str(corpus), "--output", str(tmp_path / "enc"),
                            "--quiet"]) == 2
    assert f"--vocab-out {corpus} is an existing file that is not a vocabulary" in one_error(capsys)
    assert snapshot(tmp_path) == before


def test_unreadable_corpus_is_named(tmp_path, corpus, vocab_file, capsys, monkeypatch):
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # chmod 000 does not stop root, who runs CI containers
        if str(file) == str(corpus):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", denied)
    assert preprocess_main([str(corpus), "--vocab", str(vocab_file), "--output", str(tmp_path / "enc"),
                            "--quiet"]) == 2
    assert one_error(capsys) == (f"error: {corpus}: Permission denied "
                                 "(check its permissions, or use another path)")


def test_unreadable_corpus_is_named_by_train_not_blamed_on_the_cache(tmp_path, corpus, model_config,
                                                                   vocab_file, capsys, monkeypatch):
    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if str(file) == str(corpus):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", denied)
    assert train_main(train_args(corpus, model_config, vocab_file, tmp_path / "out")) == 2
    # Before: "... (writing the cache of encoded corpora; set CHATBOT_CACHE to a writable folder)".
    assert one_error(capsys) == (f"error: {corpus}: Permission denied "
                                 "(check its permissions, or use another path)")


def test_an_unwritable_cache_says_chatbot_cache(tmp_path, corpus, model_config, vocab_file, capsys,
                                                monkeypatch, chatbot_cache):
    chatbot_cache.mkdir()
    real_access = os.access
    monkeypatch.setattr("chatbot.fileio.os.access",
                        lambda path, mode: path != chatbot_cache and real_access(path, mode))
    assert train_main(train_args(corpus, model_config, vocab_file, tmp_path / "out")) == 2
    folder = chatbot_cache / cache_key(corpus, format="auto", split=None)
    assert one_error(capsys) == (f"error: {folder}: Permission denied (writing the cache of encoded corpora; "
                                 "set CHATBOT_CACHE to a writable folder) "
                                 "(check its permissions, or use another path)")


# Both commands on each corpus, in a child limited to 2 GiB of address space (training reserves ~1 GiB):
# JSON nested 10**5 deep took ~10 GB (LCCC) or died of RecursionError (JSONL); a regression that reads
# /dev/zero or blocks on a FIFO nobody writes to fails the limit or the timeout instead of the machine.
HOSTILE_CHILD = r"""
import contextlib, io, json, sys
from chatbot.cli import preprocess_main, train_main
results = []
for command, args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = {"preprocess": preprocess_main, "train": train_main}[command](args)
    shown = [line for line in err.getvalue().splitlines() if "error" in line or "Traceback" in line]
    results.append([code, shown])
print(json.dumps(results))
"""
NESTED_LCCC = ("JSON nested deeper than 4 levels within lines 1-1 (bytes 0-65,536); an LCCC corpus is "
               '{"train": [[utterance, ...], ...]} or [[utterance, ...], ...]: fix the file, or give its '
               "format with --format")
NESTED_JSONL = ("nested deeper than 4 levels; expected a JSON list of strings or an object with a "
                "dialog/conversation/turns list (or pass --skip-bad)")
NOT_A_FILE = ("a corpus is read several times from its start, so save it to a file first "
              "(e.g. zcat corpus.gz > corpus.txt)")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs POSIX")
def test_hostile_corpora_fail_at_once_in_bounded_memory(tmp_path, model_config, vocab_file):
    deep = "[" * 100_000 + "]" * 100_000
    for name in ("deep.json", "deep", "deep.jsonl"):  # "deep": the format is detected
        (tmp_path / name).write_text(deep + "\n" * name.endswith(".jsonl"))
    os.mkfifo(tmp_path / "fifo")
    # The corpus -> what its error line says after its name (tmp_path / "/dev/zero" is /dev/zero).
    after_name = {"deep.json": f": {NESTED_LCCC}", "deep": f": {NESTED_LCCC}",
                  "deep.jsonl": f":1: {NESTED_JSONL}",
                  "/dev/zero": f": not a regular file but a character device; {NOT_A_FILE}",
                  "fifo": f": not a regular file but a pipe (FIFO); {NOT_A_FILE}"}
    expected = {str(tmp_path / name): text for name, text in after_name.items()}
    cases = [("preprocess", [c, "--vocab", str(vocab_file), "--output", str(tmp_path / "enc"), "--quiet"])
             for c in expected]
    cases += [("train", train_args(c, model_config, vocab_file, tmp_path / "out")) for c in expected]
    limit = 2 << 30
    child = subprocess.run([sys.executable, "-c", HOSTILE_CHILD, json.dumps(cases)], capture_output=True,
                           text=True, timeout=600, cwd=Path(__file__).parents[1],
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout) == [[2, [f"error: {c}{text}"]] for c, text in expected.items()] * 2
    assert not (tmp_path / "enc").exists() and not (tmp_path / "out").exists()


def test_disk_full_while_encoding_leaves_nothing(tmp_path, corpus, vocab_file, capsys, monkeypatch):
    class FullDisk:
        def __init__(self, path, mode):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
    monkeypatch.setattr("chatbot.data.preprocess.open", FullDisk, raising=False)
    assert preprocess_main([str(corpus), "--vocab", str(vocab_file), "--output", str(tmp_path / "enc"),
                            "--quiet"]) == 2
    assert one_error(capsys) == (f"error: {tmp_path / 'enc' / 'tokens.bin'}: No space left on device "
                                 "(the disk is full: free some space or write elsewhere)")
    assert not [p for p in tmp_path.iterdir() if "enc" in p.name]


def test_read_only_output_fails_before_any_work(tmp_path, corpus, vocab_file, capsys, monkeypatch):
    monkeypatch.setattr("chatbot.fileio.os.access", lambda *args: False)
    read_only = os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255))
    monkeypatch.setattr("chatbot.fileio.os.statvfs", lambda path: read_only)
    monkeypatch.setattr("chatbot.data.preprocess.preprocess", lambda *a, **k: pytest.fail("encoded anyway"))
    assert preprocess_main([str(corpus), "--vocab", str(vocab_file), "--output", str(tmp_path / "enc")]) == 2
    assert "enc: Read-only file system (that file system is read-only" in one_error(capsys)


# --- chatbot-eval and damaged model folders ---------------------------------------------------------

def test_eval_output_is_checked_before_evaluating(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("chatbot.evaluate.evaluate_model", lambda *a, **k: pytest.fail("evaluated anyway"))
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(corpus), "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a folder" in one_error(capsys)
    (tmp_path / "notes.json").write_text("{}")
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(corpus),
                      "--output", str(tmp_path / "notes.json")]) == 2
    assert "is an existing file that is not a chatbot-eval report" in one_error(capsys)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _nan_weights(path):
    nan = {k: torch.full_like(v, float("nan")) for k, v in load_file(path).items()}
    save_file(nan, path, metadata={"format": "pt"})
    # chatbot never saves NaN weights: such a folder comes from another tool, without weights.sha256.
    (path.parent / "weights.sha256").unlink()


@pytest.mark.parametrize("file, damage, message", [
    ("model.safetensors", _truncate, "model.safetensors could not be read (Error while deserializing header"),
    ("model.safetensors", _nan_weights, "weight tensors hold NaN or inf"),
    ("config.json", lambda p: p.write_text('{"n_layer": 2,'), "config.json is not a valid JSON model config"),
    ("config.json", lambda p: p.write_text(p.read_text().replace('"n_layer": 2', '"n_layer": "two"')),
     re.compile(r"config\.json( is not a valid gpt2 config \(|: )" + WRONG_TYPE)),
    ("config.json", lambda p: p.write_text(p.read_text().replace('"n_layer": 2', '"n_layer": -1')),
     "config.json: n_layer must be a positive integer, got -1"),
    ("training_args.json", lambda p: p.write_text("{"),
     "training_args.json is not a valid JSON training arguments"),
])
def test_damaged_model_folder_is_named(tiny_model_dir, corpus, capsys, file, damage, message):
    damage(tiny_model_dir / file)
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(corpus), "--no-generate", "--quiet"]) == 2
    line = one_error(capsys)
    assert str(tiny_model_dir) in line and says(line, message)


def test_an_internal_bug_says_so_and_debug_shows_the_traceback(tiny_model_dir, corpus, capsys, monkeypatch):
    monkeypatch.setattr("chatbot.evaluate.evaluate_model", lambda *a, **k: {}["missing"])
    args = ["--model", str(tiny_model_dir), "--data", str(corpus), "--quiet"]
    assert eval_main(args) == 1
    assert ("internal error (KeyError: 'missing'). This is a bug in chatbot: re-run with --debug"
            in one_error(capsys))
    assert eval_main(args + ["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


# --- chatbot-train ----------------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"n_layer": "two"}, re.compile(r"tiny\.json: " + WRONG_TYPE)),
    ({"n_layer": -1}, "tiny.json: n_layer must be a positive integer, got -1"),
    ({"attn_pdrop": 2}, "tiny.json: attn_pdrop must be a number in [0, 1], got 2"),
])
def test_model_config_values_are_checked(corpus, model_config, vocab_file, tmp_path, capsys, config, message):
    fields = {"n_embd": 32, "n_head": 2, "n_positions": 64, "n_layer": 2, **config}
    model_config.write_text(json.dumps(fields))
    assert train_main(train_args(corpus, model_config, vocab_file, tmp_path / "out")) == 2
    assert says(one_error(capsys), message)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("precious"), "is an existing file"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("precious")),
     "is a folder holding other files (notes.txt)"),
    (lambda p: (p.mkdir(), (p / "metrics.jsonl").write_text("{}\n")),
     "already holds a training output; pass --resume auto to continue it or --overwrite"),
])
def test_train_output_dir_rules(corpus, model_config, vocab_file, tmp_path, capsys, make, message):
    make(tmp_path / "out")
    before = snapshot(tmp_path)
    assert train_main(train_args(corpus, model_config, vocab_file, tmp_path / "out")) == 2
    assert message in one_error(capsys)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_the_previous_run(corpus, model_config, vocab_file, tmp_path):
    out = tmp_path / "out"
    first = train_args(corpus, model_config, vocab_file, out, "--max-steps", "2", "--save-steps", "1")
    assert train_main(first) == 0
    (out / ".best.old").mkdir()  # a stale leftover is ours too
    assert train_main(train_args(corpus, model_config, vocab_file, out, "--max-steps", "1",
                                 "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "final", "metrics.jsonl"]


def test_non_finite_loss_stops_training_and_publishes_nothing(corpus, model_config, vocab_file, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    args = train_args(corpus, model_config, vocab_file, out, "--lr", "1e10", "--log-steps", "1",
                      "--save-steps", "1")
    assert train_main(args) == 2
    line = one_error(capsys)
    assert "became nan at step 2" in line or "training diverged" in line, line
    assert f"--resume {out / 'checkpoint-1'}" in line
    assert not (out / "final").exists() and not (out / "best").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-1"]
    load_model(out / "checkpoint-1")  # what was kept is finite and loads
    with pytest.raises(SystemExit):
        train_main(train_args(corpus, model_config, vocab_file, out, "--lr", "inf"))
    assert "--lr must be > 0 and finite, got inf" in capsys.readouterr().err


@pytest.fixture
def trained(corpus, model_config, vocab_file, tmp_path):
    """An output folder with checkpoint-1 .. checkpoint-3."""
    out = tmp_path / "out"
    assert train_main(train_args(corpus, model_config, vocab_file, out, "--max-steps", "3",
                                 "--save-steps", "1", "--save-total-limit", "0")) == 0
    return out


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("content, message", [
    ("payload", "holds Python objects, not only tensors"),
    ("old format", "holds Python objects, not only tensors"),
    ("truncated", "is damaged, truncated or unreadable"),
])
def test_trainer_state_is_never_unpickled(trained, corpus, model_config, vocab_file, tmp_path, capsys,
                                          content, message):
    state = trained / "checkpoint-3" / STATE_FILE
    marker = tmp_path / "payload-ran"
    if content == "payload":
        torch.save({"optimizer": Payload(str(marker))}, state)
    elif content == "old format":  # what chatbot wrote before: numpy's RNG state pickled as objects
        import numpy as np
        torch.save({"rng": [{"numpy": np.random.get_state()}]}, state)
    else:
        state.write_bytes(state.read_bytes()[:300])
    args = train_args(corpus, model_config, vocab_file, trained, "--max-steps", "4", "--resume",
                      str(trained / "checkpoint-3"))
    assert train_main(args) == 2
    line = one_error(capsys)
    assert str(state) in line and message in line
    assert not marker.exists()


def test_resume_auto_skips_a_damaged_newest_checkpoint(trained, corpus, model_config, vocab_file, capsys):
    _truncate(trained / "checkpoint-3" / "model.safetensors")
    (trained / ".best.old").mkdir()  # and what a kill mid-save leaves
    (trained / ".checkpoint-4.tmp").mkdir()
    args = train_args(corpus, model_config, vocab_file, trained, "--max-steps", "4", "--resume", "auto")
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: skipping {trained / 'checkpoint-3'}: model.safetensors is damaged" in err
    assert f"cleaned {trained / '.best.old'}" in err
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]
    assert f"dropped 1 row past step 2 from {trained / 'metrics.jsonl'}" in err  # resumed from checkpoint-2
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4]


def test_disk_full_during_a_save_names_the_folder(corpus, model_config, vocab_file, tmp_path, capsys,
                                                  monkeypatch):
    def full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "model.safetensors"))
    monkeypatch.setattr("chatbot.train.checkpoint.save_model", full)
    out = tmp_path / "out"
    assert train_main(train_args(corpus, model_config, vocab_file, out, "--max-steps", "1")) == 2
    weights = out / "checkpoint-1" / "model.safetensors"
    assert one_error(capsys).startswith(f"error: {weights}: No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


# --- SIGKILL at random moments of a --save-steps 1 run -----------------------------------------------

def _kill_and_resume(corpus, model_config, vocab_file, out, kills, seed, *extra):
    """Kill a `--save-steps 1` run `kills` times at random moments; after each kill every published
    folder must load and the next `--resume auto` run must start from the newest good checkpoint."""
    rng = random.Random(seed)
    # Enough epochs, and no early stopping, that no run ends by itself between two kills: with 30 and
    # --patience 3 the 19th run of 20 often did.
    args = train_args(corpus, model_config, vocab_file, out, "--save-steps", "1", "--epochs", "200",
                      "--valid-ratio", "0.2", "--log-steps", "1", "--save-total-limit", "2",
                      "--patience", "0", "--resume", "auto", *extra)
    # Forked, not spawned: a fresh interpreter would spend seconds importing torch before each kill.
    fork = multiprocessing.get_context("fork")
    for _ in range(kills):
        proc = fork.Process(target=_train_quietly, args=(args,))
        proc.start()
        start, deadline = _steps_logged(out), time.time() + 60
        while _steps_logged(out) <= start and proc.exitcode is None and time.time() < deadline:
            # Wait until this run trains, then kill it: with a save every step, often mid-save.
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL, f"the resumed run ended by itself with {proc.exitcode}"
        for folder in [p for p in out.iterdir() if p.name.startswith(("checkpoint-", "best", "final"))]:
            load_model(folder)
    assert train_main(args + ["--max-steps", str(_steps_logged(out) + 1)]) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    load_model(out / "final")


def _train_quietly(args):
    sys.stderr = open(os.devnull, "w")
    os._exit(train_main(args))


def _steps_logged(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


# LoRA: each checkpoint is an adapter folder over the run's base/ (random weights from the config).
LORA = ("--lora-r", "4")


@pytest.mark.parametrize("extra", [(), LORA], ids=["full", "lora"])
def test_sigkill_during_saves_short(corpus, model_config, vocab_file, tmp_path, extra):
    _kill_and_resume(corpus, model_config, vocab_file, tmp_path / "out", 2, 0, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), LORA], ids=["full", "lora"])
def test_sigkill_during_saves_20_times(corpus, model_config, vocab_file, tmp_path, extra):
    _kill_and_resume(corpus, model_config, vocab_file, tmp_path / "out", 20, 1, *extra)


# --- a file of the user's beside a run ---------------------------------------------------------------

def test_a_foreign_file_beside_a_run_never_blocks_resume_and_is_never_deleted(trained, corpus, model_config,
                                                                               vocab_file, capsys):
    (trained / "notes.txt").write_text("precious")
    resume = train_args(corpus, model_config, vocab_file, trained, "--max-steps", "4", "--resume", "auto")
    assert train_main(resume) == 0
    assert "warning" not in capsys.readouterr().err
    assert (trained / "checkpoint-4").is_dir() and (trained / "notes.txt").read_text() == "precious"
    assert train_main(train_args(corpus, model_config, vocab_file, trained, "--max-steps", "1")) == 2
    assert "already holds a training output; pass --resume auto" in one_error(capsys)
    assert train_main(train_args(corpus, model_config, vocab_file, trained, "--max-steps", "1",
                                 "--overwrite")) == 0
    assert f"kept {trained / 'notes.txt'}: training did not write it" in capsys.readouterr().err
    assert sorted(p.name for p in trained.iterdir()) == ["checkpoint-1", "final", "metrics.jsonl",
                                                         "notes.txt"]
    assert (trained / "notes.txt").read_text() == "precious"


def test_a_folder_without_a_checkpoint_is_refused_naming_the_foreign_file(corpus, model_config, vocab_file,
                                                                          tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (out / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert train_main(train_args(corpus, model_config, vocab_file, out, "--resume", "auto")) == 2
    assert one_error(capsys) == (
        f"error: --output-dir {out} holds notes.txt, which training does not write, and no checkpoint: it is "
        "not a previous training run, and nothing in it is replaced. Move notes.txt elsewhere, or name a "
        "new or empty folder.")
    assert snapshot(tmp_path) == before


# --- Ctrl-C on `chatbot-train 2>&1 | tee train.log` ----------------------------------------------------

@pytest.mark.parametrize("stderr_too", [True, False], ids=["2>&1 | tee", "| tee"])
def test_ctrl_c_through_a_pipe_saves_then_exits_130(corpus, model_config, vocab_file, tmp_path, stderr_too):
    """Ctrl-C reaches the whole pipeline: the reader dies with it, and every later write of the trainer to
    the pipe fails (EPIPE). The checkpoint comes first, then the message on stderr while it still reads."""
    out, err_file = tmp_path / "out", tmp_path / "stderr.txt"
    args = ["--train", str(corpus), "--config", str(model_config), "--vocab", str(vocab_file), "--output-dir",
            str(out), "--batch-size", "4", "--epochs", "100000", "--log-steps", "1"]  # not --quiet: a bar
    code = "import sys; from chatbot.cli import train_main; sys.exit(train_main(sys.argv[1:]))"
    root = Path(__file__).resolve().parents[1]
    with err_file.open("w") as err:
        trainer = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT if stderr_too else err, process_group=0,
                                   env=dict(os.environ, PYTHONPATH=str(root)))
    # `cat` stands for tee: it reads the pipe and, in the trainer's process group (a shell's job), dies of
    # SIGINT. The group is not this test's, so the Ctrl-C below reaches only the two.
    reader = subprocess.Popen(["cat"], stdin=trainer.stdout, stdout=subprocess.DEVNULL,
                              process_group=trainer.pid)
    trainer.stdout.close()  # the reader must be the pipe's only one, as in a shell
    deadline = time.time() + 120
    while _steps_logged(out) < 1 and trainer.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(trainer.pid, signal.SIGINT)
    assert reader.wait(60) == -signal.SIGINT
    assert trainer.wait(120) == 130, err_file.read_text()
    step = _steps_logged(out)
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints[-1] == step and (out / f"checkpoint-{step}" / STATE_FILE).is_file()
    said = err_file.read_text()
    assert "Traceback" not in said and "Exception ignored" not in said
    if not stderr_too:
        assert f"stopped at step {step}; checkpoint saved. Resume with the same command plus --resume auto" \
            in said


def test_an_error_line_for_a_dead_pipe_is_dropped_and_exit_code_kept(monkeypatch):
    from chatbot.cli import run_command

    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    monkeypatch.setattr(sys, "stderr", open(write_fd, "w"))

    def refused():
        raise ValueError("--output-dir out already holds a training output")
    assert run_command(refused) == 2
    assert os.path.samestat(os.fstat(write_fd), os.stat(os.devnull))  # interpreter exit flushes nothing
