"""Console entry points. Each `*_main(argv)` parses flags, then hands plain values to the library.

User mistakes (`ValueError`, `FileNotFoundError`) end with one `error:` line and exit code 2,
never a traceback; argparse uses the same code for bad flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from chatbot.options import SamplingOptions, check_options

EXIT_USAGE = 2


def run_command(fn: Callable[[], int | None]) -> int:
    """Run a command body, turning user errors into a message and exit code 2."""
    try:
        return fn() or 0
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """argparse type for counts: the message names the value and the allowed range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _option_type(name: str, kind: type) -> Callable[[str], int | float]:
    """argparse type for a sampling option, checked against the range `chatbot.options` allows."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        try:
            check_options(**{name: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    return parse


def chat_parser() -> argparse.ArgumentParser:
    d = SamplingOptions()
    p = argparse.ArgumentParser(
        prog="chatbot-chat", description="Chat with a trained model. With stdin not a terminal, read one "
        "message per line and print one reply per line (no prompts, no colour).")
    add = p.add_argument
    add("--model", metavar="DIR", default="model/final",
        help="model folder written by chatbot-train (default: %(default)s)")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: %(default)s)")
    add("--temperature", metavar="T", type=_option_type("temperature", float), default=d.temperature,
        help="sampling temperature; 0 = always the most likely token (default: %(default)s)")
    add("--top-k", metavar="K", type=_option_type("top_k", int), default=d.top_k,
        help="sample among the k most likely tokens; 0 = all (default: %(default)s)")
    add("--top-p", metavar="P", type=_option_type("top_p", float), default=d.top_p,
        help="nucleus sampling: the fewest tokens reaching this probability; 1 = off (default: %(default)s)")
    add("--repetition-penalty", metavar="X", type=_option_type("repetition_penalty", float),
        default=d.repetition_penalty, help="> 1 makes repeated tokens less likely (default: %(default)s)")
    add("--penalize-context", action="store_true",
        help="apply the repetition penalty to the conversation's tokens too, not only the reply's")
    add("--no-repeat-ngram", metavar="N", dest="no_repeat_ngram_size", default=d.no_repeat_ngram_size,
        type=_option_type("no_repeat_ngram_size", int),
        help="never repeat an n-gram of this size within a reply; 0 = off (default: %(default)s)")
    add("--min-len", metavar="N", dest="min_new_tokens", type=_option_type("min_new_tokens", int),
        default=d.min_new_tokens, help="shortest reply, in tokens (default: %(default)s)")
    add("--max-len", metavar="N", dest="max_new_tokens", type=_option_type("max_new_tokens", int),
        default=d.max_new_tokens, help="longest reply, in tokens (default: %(default)s)")
    add("--max-history", metavar="N", type=positive_int, default=3,
        help="turns the model sees, your new message included (default: %(default)s)")
    add("--seed", metavar="N", type=int, default=None, help="make replies reproducible (reply i uses seed + i)")
    add("--mmi-model", metavar="DIR", default=None,
        help="backward model folder (chatbot-train --reverse) that picks the best of --candidates")
    add("--candidates", metavar="N", dest="num_candidates", type=_option_type("num_candidates", int),
        default=d.num_candidates,
        help="replies sampled per message in one batch; > 1 needs --mmi-model (default: %(default)s)")
    add("--log-dir", metavar="DIR", default="chat_logs",
        help="where the transcript is saved on exit (default: %(default)s)")
    add("--no-transcript", action="store_true", help="do not save a transcript on exit")
    add("--history-file", metavar="FILE", default=str(Path.home() / ".chatbot_history"),
        help="keeps the lines you type, for Up-arrow recall across sessions (default: %(default)s)")
    return p


def chat_main(argv: list[str] | None = None) -> int:
    """`chatbot-chat`: talk with a model in the terminal, or answer piped lines."""
    parser = chat_parser()
    args = parser.parse_args(argv)
    if args.min_new_tokens > args.max_new_tokens:
        parser.error(f"--min-len ({args.min_new_tokens}) must be <= --max-len ({args.max_new_tokens})")
    if args.num_candidates > 1 and args.mmi_model is None:
        parser.error(f"--candidates {args.num_candidates} needs --mmi-model DIR to choose between candidates")
    return run_command(lambda: _chat(args))


def _chat(args: argparse.Namespace) -> None:
    # Imported here so that `--help` and flag errors answer without loading torch.
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from chatbot.bot import ChatBot
    from chatbot.repl import Session, prompt_reader, run_piped, run_repl

    hf_logging.disable_progress_bar()  # a bar per model load would clutter the chat
    options = {name: getattr(args, name) for name in SamplingOptions.__dataclass_fields__}
    bot = ChatBot.from_pretrained(args.model, args.device, mmi_model=args.mmi_model,
                                  max_history=args.max_history, **options)
    session = Session(bot, model_name=str(args.model), log_dir=Path(args.log_dir), seed=args.seed)
    try:
        if sys.stdin.isatty():
            run_repl(session, prompt_reader(args.history_file), Console())
        else:
            run_piped(session, sys.stdin, sys.stdout)
    finally:
        if session.transcript and not args.no_transcript:
            print(f"transcript saved to {session.save(session.default_path())}", file=sys.stderr)
