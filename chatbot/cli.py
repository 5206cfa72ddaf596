"""Console entry points. Each `*_main(argv)` parses flags, then hands plain values to the library.

Every failure ends with one `error:` line, never a traceback: bad input, a refused output and a
failing disk (permission, read-only, full, damaged file) exit 2, as argparse does for bad flags;
anything else is a bug in chatbot and exits 1, its traceback shown with --debug.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from chatbot.config import ChatConfig, EvalConfig, ExportConfig, PreprocessConfig, ServeConfig, TrainConfig
from chatbot.flags import CommonOptions, build_parser, parse_options
from chatbot.options import SamplingOptions

EXIT_USAGE = 2
EXIT_BUG = 1
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EACCES: "check its permissions, or use another path",
    errno.EPERM: "check its permissions, or use another path",
    errno.EROFS: "that file system is read-only: use another path",
    errno.EBUSY: "another process is using it: try again when it is done",
}


def run_command(fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command body, turning every failure into one `error:` line and an exit code."""
    try:
        return fn() or 0
    except KeyboardInterrupt:
        _tell("interrupted")
        return 130
    except (ValueError, OSError) as e:  # FileNotFoundError, PermissionError, ... are OSErrors
        failure, code = e, EXIT_USAGE
        message = describe_os_error(e) if isinstance(e, OSError) else str(e)
    except Exception as e:  # noqa: BLE001 - the one place a bug becomes a message instead of a traceback
        failure, code = e, EXIT_BUG
        message = (f"internal error ({type(e).__name__}: "
                   f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}). "
                   "This is a bug in chatbot: re-run with --debug for the traceback and report it")
    if debug:
        traceback.print_exception(failure)
    _tell(f"error: {message}")
    return code


def _tell(line: str) -> None:
    """Print `line` on stderr; when nobody reads it any more (`2>&1 | tee` after Ctrl-C), drop it.

    stderr then points at the null device: left holding the line, it would fail again when the
    interpreter flushes it at exit, which prints "Exception ignored" and makes the exit code 120.
    """
    try:
        print(line, file=sys.stderr, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)


def describe_os_error(e: OSError) -> str:
    """`PATH: cause (what to do)`: an OSError from the system, said for a user."""
    if e.errno is None or e.strerror is None:  # raised by us with a full message
        return str(e)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
    text = f"{where}: {e.strerror}" if where else e.strerror
    hint = _OS_HINTS.get(e.errno)
    return f"{text} ({hint})" if hint else text


def preprocess_main(argv: list[str] | None = None) -> int:
    """chatbot-preprocess: encode dialogue corpora into a memory-mapped token store."""
    parser = build_parser(
        "chatbot-preprocess", "Encode corpora into [CLS] u1 [SEP] u2 [SEP] ... id sequences, stored "
        "compactly for training.", PreprocessConfig, CommonOptions)
    cfg, common = parse_options(parser, argv, PreprocessConfig, CommonOptions)

    def body() -> None:
        from chatbot.fileio import check_output_dir, check_output_file
        from chatbot.layout import CHITCHAT, EXTRA_TOKENS
        from chatbot.data.encoded import is_encoded_dataset
        from chatbot.data.preprocess import preprocess
        from chatbot.reports import print_preprocess_summary
        from chatbot.tokenization import load_tokenizer
        from chatbot.data.vocab import is_vocab_file

        check_output_dir(cfg.output, is_ours=is_encoded_dataset, overwrite=cfg.overwrite,
                         what="chatbot-preprocess output", flag="--output")
        if cfg.vocab_out:
            check_output_file(cfg.vocab_out, is_ours=is_vocab_file, overwrite=cfg.overwrite,
                              what="vocabulary", flag="--vocab-out")
        layout = CHITCHAT
        if cfg.vocab_out:
            tokenizer = load_tokenizer(
                _build_vocab(cfg.corpus, cfg.vocab_out, cfg.min_freq, cfg.format, cfg.split))
        elif cfg.tokenizer:
            # Only here: chatbot.model.modeling imports torch, +300 MB of RSS that encoding never uses.
            from chatbot.model.modeling import load_model_tokenizer

            tokenizer, layout = load_model_tokenizer(cfg.tokenizer)  # reads text as that model does
        else:
            tokenizer = load_tokenizer(cfg.vocab)
        # Stored examples leave room for what the model's layout adds, so --max-len is what it sees.
        meta = preprocess(cfg.corpus, cfg.output, tokenizer, max_len=cfg.max_len - EXTRA_TOKENS[layout],
                          format=cfg.format, split=cfg.split, skip_bad=cfg.skip_bad, workers=cfg.workers,
                          progress=not cfg.quiet)
        if not cfg.quiet:
            print_preprocess_summary(meta, cfg.output)

    return run_command(body, common.debug)


def _build_vocab(corpora, output, min_freq, format, split) -> str:
    from chatbot.data.corpus import read_dialogues
    from chatbot.data.vocab import corpus_vocab, write_vocab

    texts = (t for path in corpora
             for d in read_dialogues(path, format=format, split=split, skip_bad=True) for t in d)
    tokens = corpus_vocab(texts, min_freq)
    print(f"wrote a {len(tokens)}-token vocabulary to {write_vocab(tokens, output)}", file=sys.stderr)
    return output


def train_parser() -> argparse.ArgumentParser:
    return build_parser(
        "chatbot-train", "Train a GPT-2 chitchat model (from a config, or fine-tuned from a pretrained "
        "folder). With no arguments: the bundled tiny config on the bundled sample dialogues, into "
        "./model. Several GPUs: torchrun --nproc_per_node N --no-python chatbot-train ...",
        TrainConfig, CommonOptions,
        epilog="Re-run a training: chatbot-train --config-file model/final/training_args.json "
               "--output-dir DIR")


def train_main(argv: list[str] | None = None) -> int:
    """chatbot-train: train or fine-tune a GPT-2 on dialogues."""
    cfg, common = parse_options(train_parser(), argv, TrainConfig, CommonOptions)

    def body() -> int:
        from chatbot.train.loop import train

        _quiet_transformers()
        return train(cfg).exit_code

    return run_command(body, common.debug)


def _quiet_transformers() -> None:
    """Our own tables say what happens; transformers' notices (e.g. loss_type) would only add noise."""
    from transformers.utils import logging

    logging.set_verbosity_error()


def chat_parser() -> argparse.ArgumentParser:
    from chatbot.repl import command_lines  # the REPL's own table, so the two lists cannot drift apart

    return build_parser(
        "chatbot-chat", "Chat with a trained model. With stdin not a terminal, read one message per line and "
        "print one reply per line (no prompts, no colour).", ChatConfig, SamplingOptions, CommonOptions,
        epilog="Commands while chatting:\n" + "\n".join("  " + line for line in command_lines()))


def _check_candidates(parser: argparse.ArgumentParser, options: SamplingOptions,
                      mmi_model: str | None) -> None:
    if options.num_candidates > 1 and mmi_model is None:
        parser.error(f"--candidates {options.num_candidates} needs --mmi-model DIR "
                     "to choose between candidates")


def chat_main(argv: list[str] | None = None) -> int:
    """`chatbot-chat`: talk with a model in the terminal, or answer piped lines."""
    parser = chat_parser()
    cfg, options, common = parse_options(parser, argv, ChatConfig, SamplingOptions, CommonOptions)
    _check_candidates(parser, options, cfg.mmi_model)
    return run_command(lambda: _chat(cfg, options), common.debug)


def _chat(cfg: ChatConfig, options: SamplingOptions) -> int:
    model = cfg.model_path()  # before torch loads: with no model to chat with, say so at once
    # Imported here so that `--help`, flag errors and a missing model answer without loading torch.
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from chatbot.bot import ChatBot
    from chatbot.repl import Session, prompt_reader, run_piped, run_repl

    # Before loading the model: a bad --log-dir fails at once.
    log_dir, autosave = _transcript_plan(cfg.log_dir, cfg.transcript)
    hf_logging.disable_progress_bar()  # a bar per model load would clutter the chat
    bot = ChatBot.from_pretrained(model, cfg.device, dtype=cfg.dtype, mmi_model=cfg.mmi_model,
                                  max_history=cfg.max_history, **dataclasses.asdict(options))
    session = Session(bot, model_name=model, log_dir=log_dir, seed=cfg.seed)
    saved = True
    try:
        if sys.stdin.isatty():
            run_repl(session, prompt_reader(cfg.history_file), Console())
        else:
            run_piped(session, sys.stdin, sys.stdout)
    finally:
        if autosave and session.transcript:
            saved = _save_transcript(session)
    return 0 if saved else EXIT_USAGE


def _transcript_plan(given_dir: str | None, transcript: bool) -> tuple[Path, bool]:
    """(transcript folder, save on exit?). A terminal chat saves into the per-user data folder unless
    told otherwise; a piped one only into an explicit --log-dir (its stdout already is the record)."""
    from chatbot.repl import default_transcript_dir

    log_dir = Path(given_dir).expanduser() if given_dir else default_transcript_dir()
    autosave = transcript and (given_dir is not None or sys.stdin.isatty())
    if autosave:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(log_dir, os.W_OK | os.X_OK):
                raise PermissionError(f"{log_dir} is not writable")
        except OSError as e:
            if given_dir:
                raise ValueError(f"--log-dir {log_dir}: cannot write transcripts there ({e}); "
                                 "choose another folder or pass --no-transcript") from None
            print(f"warning: cannot write transcripts to {log_dir} ({e}); this chat will not be saved "
                  "(--log-dir DIR saves it elsewhere)", file=sys.stderr)
            autosave = False
    return log_dir, autosave


def _save_transcript(session) -> bool:
    from chatbot.repl import printable

    try:
        path = session.save()
    except OSError as e:
        print(f"error: could not save the transcript: {printable(str(e))}", file=sys.stderr)
        return False
    print(f"transcript saved to {printable(str(path))}", file=sys.stderr)
    return True


def eval_parser() -> argparse.ArgumentParser:
    return build_parser(
        "chatbot-eval", "Perplexity and reply metrics (BLEU-1/2/4 on characters, Distinct-1/2, reply "
        "length, empty and repeated replies) of a model on a corpus. Each dialogue's last turn is the "
        "reference for a reply generated from the turns before it, with the sampling options "
        "chatbot-chat uses.",
        EvalConfig, SamplingOptions, CommonOptions,
        epilog="CDial-GPT's evaluation setting: --temperature 0.7 --top-p 0.9 --top-k 0")


def eval_main(argv: list[str] | None = None) -> int:
    """chatbot-eval: score a model on a corpus."""
    parser = eval_parser()
    cfg, options, common = parse_options(parser, argv, EvalConfig, SamplingOptions, CommonOptions)
    _check_candidates(parser, options, None)

    def body() -> None:
        from chatbot.evaluate import evaluate_model, is_eval_report
        from chatbot.fileio import check_output_file
        from chatbot.reports import print_eval_report

        if cfg.output:  # checked now: a bad path must not cost a whole evaluation
            check_output_file(cfg.output, is_ours=is_eval_report, overwrite=cfg.overwrite,
                              what="chatbot-eval report", flag="--output")
        _quiet_transformers()
        report = evaluate_model(cfg.model, cfg.data, format=cfg.format, split=cfg.split,
                                skip_bad=cfg.skip_bad, loss_on=cfg.loss_on, batch_size=cfg.batch_size,
                                num_samples=cfg.num_samples, seed=cfg.seed,
                                sampling=dataclasses.asdict(options), greedy=cfg.greedy,
                                max_history=cfg.max_history, device=cfg.device, dtype=cfg.dtype,
                                generate=cfg.generate, progress=not cfg.quiet)
        if not cfg.quiet:  # shown first: a disk failing at the write still leaves the results on screen
            print_eval_report(report, cfg.examples)
        if cfg.output:
            report.save(cfg.output)

    return run_command(body, common.debug)


def serve_parser() -> argparse.ArgumentParser:
    return build_parser(
        "chatbot-serve", "Serve a model over an OpenAI-compatible API (POST /v1/chat/completions, "
        "GET /v1/models, GET /health) with a chat page at /. Concurrent requests are decoded together.",
        ServeConfig, SamplingOptions, CommonOptions)


def serve_main(argv: list[str] | None = None) -> int:
    """`chatbot-serve`: an OpenAI-compatible HTTP server with a chat page."""
    parser = serve_parser()
    cfg, options, common = parse_options(parser, argv, ServeConfig, SamplingOptions, CommonOptions)
    _check_candidates(parser, options, None)
    try:
        api_key = cfg.api_key_in(os.environ)
    except ValueError as e:
        parser.error(str(e))
    return run_command(lambda: _serve(cfg, options, api_key), common.debug)


def _serve(cfg: ServeConfig, options: SamplingOptions, api_key: str | None) -> int:
    from chatbot.serve.server import run_server

    return run_server(cfg, options, api_key)


def export_parser() -> argparse.ArgumentParser:
    return build_parser(
        "chatbot-export", "Convert a model folder for another CPU runtime: CTranslate2 (int8 by default) or "
        "ONNX Runtime. The output folder also holds the tokenizer, chat template and generation config.",
        ExportConfig, CommonOptions,
        epilog="e.g. chatbot-export --to ct2 --model model/final -o model/final-ct2")


def export_main(argv: list[str] | None = None) -> int:
    """`chatbot-export`: a model folder converted for CTranslate2 or ONNX Runtime."""
    cfg, common = parse_options(export_parser(), argv, ExportConfig, CommonOptions)

    def body() -> None:
        from chatbot.deploy.export import export_model

        _quiet_transformers()
        folder = export_model(cfg.model, cfg.output, to=cfg.to, quantization=cfg.quantization,
                              overwrite=cfg.overwrite)
        print(f"wrote the {cfg.to} export ({cfg.quantization}) of {cfg.model} to {folder}", file=sys.stderr)

    return run_command(body, common.debug)
