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
import typing
from collections.abc import Callable
from pathlib import Path

from chatbot.options import SamplingOptions, check_options

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
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # FileNotFoundError, PermissionError, ... are OSErrors
        failure, code = e, EXIT_USAGE
        message = describe_os_error(e) if isinstance(e, OSError) else str(e)
    except Exception as e:  # noqa: BLE001 - the one place a bug becomes a message instead of a traceback
        failure, code = e, EXIT_BUG
        message = (f"internal error ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}). "
                   "This is a bug in chatbot: re-run with --debug for the traceback and report it")
    if debug:
        traceback.print_exception(failure)
    print(f"error: {message}", file=sys.stderr)
    return code


def describe_os_error(e: OSError) -> str:
    """`PATH: cause (what to do)`: an OSError from the system, said for a user."""
    if e.errno is None or e.strerror is None:  # raised by us with a full message
        return str(e)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
    text = f"{where}: {e.strerror}" if where else e.strerror
    hint = _OS_HINTS.get(e.errno)
    return f"{text} ({hint})" if hint else text


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")


def positive_int(text: str) -> int:
    """argparse type for counts: the message names the value and the allowed range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--vocab", default="vocab/vocab.txt",
                       help="BERT vocab.txt to tokenize with (default: the shipped vocab/vocab.txt)")
    group.add_argument("--tokenizer", metavar="DIR|ID",
                       help="a folder with tokenizer files instead, or the model folder or Hub id you will fine-tune")


def preprocess_main(argv: list[str] | None = None) -> int:
    """chatbot-preprocess: encode dialogue corpora into a memory-mapped token store."""
    from chatbot.corpus import FORMATS

    parser = argparse.ArgumentParser(
        prog="chatbot-preprocess",
        description="Encode corpora into [CLS] u1 [SEP] u2 [SEP] ... id sequences, stored compactly for training.")
    parser.add_argument("corpus", nargs="+", help="corpus files (txt, LCCC json, jsonl or plain text)")
    parser.add_argument("--output", "-o", required=True, help="folder to write tokens.bin, offsets.npy, meta.json into")
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="corpus format; auto picks by extension and first line (text is never guessed)")
    parser.add_argument("--split", help="LCCC split to read: train, valid or test (default: train)")
    _add_tokenizer_flags(parser)
    parser.add_argument("--vocab-out", metavar="FILE",
                        help="first build a vocabulary from the corpora (specials + every character seen "
                             "--min-freq times), write it here and encode with it")
    parser.add_argument("--min-freq", type=positive_int, default=1,
                        help="with --vocab-out: keep characters seen at least this often (default 1)")
    parser.add_argument("--max-len", type=positive_int, default=256,
                        help="tokens per example; longer dialogues are split at turn boundaries (default 256)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="encoding processes (default 1: the Rust tokenizer already uses every core)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable records instead of stopping")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output when it holds a previous chatbot-preprocess output (never anything else)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.max_len < 4:
        parser.error(f"argument --max-len: must be >= 4 to hold [CLS] a [SEP] b [SEP], got {args.max_len}")

    def body() -> None:
        from chatbot.fileio import check_output_dir
        from chatbot.layout import CHITCHAT, EXTRA_TOKENS
        from chatbot.modeling import load_model_tokenizer
        from chatbot.preprocess import is_encoded_dataset, preprocess
        from chatbot.reports import print_preprocess_summary
        from chatbot.tokenization import load_tokenizer

        check_output_dir(args.output, is_ours=is_encoded_dataset, overwrite=args.overwrite,
                         what="chatbot-preprocess output", flag="--output")
        layout = CHITCHAT
        if args.vocab_out:
            tokenizer = load_tokenizer(_build_vocab(args.corpus, args.vocab_out, args.min_freq, args.format, args.split))
        elif args.tokenizer:
            tokenizer, layout = load_model_tokenizer(args.tokenizer)  # reads text as that model does
        else:
            tokenizer = load_tokenizer(args.vocab)
        # Stored examples leave room for what the model's layout adds, so --max-len is what it sees.
        meta = preprocess(args.corpus, args.output, tokenizer, max_len=args.max_len - EXTRA_TOKENS[layout], format=args.format,
                          split=args.split, skip_bad=args.skip_bad, workers=args.workers, progress=not args.quiet)
        if not args.quiet:
            print_preprocess_summary(meta, args.output)

    return run_command(body, args.debug)


def _build_vocab(corpora, output, min_freq, format, split) -> str:
    from chatbot.corpus import read_dialogues
    from chatbot.vocab import corpus_vocab, write_vocab

    texts = (t for path in corpora for d in read_dialogues(path, format=format, split=split, skip_bad=True) for t in d)
    tokens = corpus_vocab(texts, min_freq)
    print(f"wrote a {len(tokens)}-token vocabulary to {write_vocab(tokens, output)}", file=sys.stderr)
    return output


def _config_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per dataclass field (`batch_size` -> `--batch-size`), with the field's help and default."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        shown = f.metadata["help"]
        if f.default not in (None, False) and "default" not in shown:
            shown += f" (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=shown)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        metavar = None if "choices" in f.metadata else {int: "N", float: "X"}.get(base, "PATH")
        parser.add_argument(flag, type=base, default=f.default, help=shown,
                            choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar", metavar))
    return parser


def train_main(argv: list[str] | None = None) -> int:
    """chatbot-train: train or fine-tune a GPT-2 on dialogues."""
    from chatbot.config import TrainConfig

    parser = _config_parser(
        TrainConfig, "chatbot-train",
        "Train a GPT-2 chitchat model (from a config, or fine-tuned from a pretrained folder). "
        "With no arguments: configs/tiny.json on data/train.txt into model/. "
        "Several GPUs: torchrun --nproc_per_node N --no-python chatbot-train ...")
    add_debug_flag(parser)
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug")
    try:
        cfg = TrainConfig(**args)
    except ValueError as e:  # checked before any work starts, reported like argparse's own errors
        parser.error(str(e))

    def body() -> int:
        from chatbot.train import train

        _quiet_transformers()
        return train(cfg).exit_code

    return run_command(body, debug)


def _quiet_transformers() -> None:
    """Our own tables say what happens; transformers' notices (e.g. loss_type) would only add noise."""
    from transformers.utils import logging

    logging.set_verbosity_error()


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


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The default sampling options, as chatbot-chat and chatbot-serve take them."""
    d = SamplingOptions()
    add = p.add_argument
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


def chat_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatbot-chat", description="Chat with a trained model. With stdin not a terminal, read one "
        "message per line and print one reply per line (no prompts, no colour).")
    add = p.add_argument
    add("--model", metavar="DIR|ID", default="model/final",
        help="model folder written by chatbot-train, or a Hugging Face Hub id such as thu-coai/CDial-GPT_LCCC-base "
             "(default: %(default)s)")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: %(default)s)")
    _add_sampling_flags(p)
    add("--max-history", metavar="N", type=positive_int, default=3,
        help="turns the model sees, your new message included (default: %(default)s)")
    add("--seed", metavar="N", type=int, default=None, help="make replies reproducible (reply i uses seed + i)")
    add("--mmi-model", metavar="DIR|ID", default=None,
        help="backward model folder or Hub id (chatbot-train --reverse) that picks the best of --candidates")
    add("--candidates", metavar="N", dest="num_candidates", type=_option_type("num_candidates", int),
        default=SamplingOptions().num_candidates,
        help="replies sampled per message in one batch; > 1 needs --mmi-model (default: %(default)s)")
    add("--log-dir", metavar="DIR", default=None,
        help="folder for the transcript saved on exit (default: $XDG_DATA_HOME/chatbot/transcripts, else "
             "~/.local/share/chatbot/transcripts; a piped chat saves one only when this is given)")
    add("--no-transcript", action="store_true", help="do not save a transcript on exit")
    add("--history-file", metavar="FILE", default=str(Path.home() / ".chatbot_history"),
        help="keeps the lines you type, for Up-arrow recall across sessions (default: %(default)s)")
    add_debug_flag(p)
    return p


def chat_main(argv: list[str] | None = None) -> int:
    """`chatbot-chat`: talk with a model in the terminal, or answer piped lines."""
    parser = chat_parser()
    args = parser.parse_args(argv)
    if args.min_new_tokens > args.max_new_tokens:
        parser.error(f"--min-len ({args.min_new_tokens}) must be <= --max-len ({args.max_new_tokens})")
    if args.num_candidates > 1 and args.mmi_model is None:
        parser.error(f"--candidates {args.num_candidates} needs --mmi-model DIR to choose between candidates")
    return run_command(lambda: _chat(args), args.debug)


def _chat(args: argparse.Namespace) -> int:
    # Imported here so that `--help` and flag errors answer without loading torch.
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from chatbot.bot import ChatBot
    from chatbot.repl import Session, prompt_reader, run_piped, run_repl

    log_dir, autosave = _transcript_plan(args)  # before loading: a bad --log-dir fails at once
    hf_logging.disable_progress_bar()  # a bar per model load would clutter the chat
    options = {name: getattr(args, name) for name in SamplingOptions.__dataclass_fields__}
    bot = ChatBot.from_pretrained(args.model, args.device, mmi_model=args.mmi_model,
                                  max_history=args.max_history, **options)
    session = Session(bot, model_name=str(args.model), log_dir=log_dir, seed=args.seed)
    saved = True
    try:
        if sys.stdin.isatty():
            run_repl(session, prompt_reader(args.history_file), Console())
        else:
            run_piped(session, sys.stdin, sys.stdout)
    finally:
        if autosave and session.transcript:
            saved = _save_transcript(session)
    return 0 if saved else EXIT_USAGE


def _transcript_plan(args: argparse.Namespace) -> tuple[Path, bool]:
    """(transcript folder, save on exit?). A terminal chat saves into the per-user data folder unless
    told otherwise; a piped one only into an explicit --log-dir (its stdout already is the record)."""
    from chatbot.repl import default_transcript_dir

    log_dir = Path(args.log_dir).expanduser() if args.log_dir else default_transcript_dir()
    autosave = not args.no_transcript and (args.log_dir is not None or sys.stdin.isatty())
    if autosave:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(log_dir, os.W_OK | os.X_OK):
                raise PermissionError(f"{log_dir} is not writable")
        except OSError as e:
            if args.log_dir:
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
    from chatbot.corpus import FORMATS
    from chatbot.layout import LOSS_ON

    p = argparse.ArgumentParser(
        prog="chatbot-eval",
        description="Perplexity and reply metrics (BLEU-1/2/4 on characters, Distinct-1/2, reply length, empty "
                    "and repeated replies) of a model on a corpus. Each dialogue's last turn is the reference "
                    "for a reply generated from the turns before it.")
    add = p.add_argument
    add("--model", metavar="DIR|ID", default="model/final", help="model folder or Hub id (default: %(default)s)")
    add("--data", metavar="PATH", default="data/valid.txt",
        help="corpus file or chatbot-preprocess folder (default: %(default)s)")
    add("--format", choices=FORMATS, default="auto", help="corpus format (default: auto)")
    add("--split", metavar="NAME", help="LCCC split to read")
    add("--skip-bad", action="store_true", help="skip unreadable corpus records instead of stopping")
    add("--loss-on", choices=LOSS_ON, help="tokens scored for perplexity (default: what the model was trained on)")
    add("--batch-size", metavar="N", type=positive_int, default=16, help="examples per forward pass (default: 16)")
    add("--num-samples", metavar="N", type=positive_int, help="evaluate a seeded random subset of N examples")
    add("--seed", metavar="N", type=int, default=42, help="subset and sampling seed (default: 42)")
    add("--greedy", action="store_true", help="also generate greedily and report both")
    add("--no-generate", action="store_true", help="perplexity only")
    add("--temperature", metavar="T", type=_option_type("temperature", float), help="(default: 0.7, as CDial-GPT)")
    add("--top-p", metavar="P", type=_option_type("top_p", float), help="(default: 0.9, as CDial-GPT)")
    add("--top-k", metavar="K", type=_option_type("top_k", int), help="(default: 0 = off)")
    add("--max-len", metavar="N", dest="max_new_tokens", type=_option_type("max_new_tokens", int),
        help="longest reply in tokens (default: 25)")
    add("--max-history", metavar="N", type=positive_int, default=3, help="turns the model sees (default: 3)")
    add("--examples", metavar="N", type=int, default=3, help="side-by-side samples to print (default: 3)")
    add("--output", metavar="FILE", help="write the full report (metrics and every sample) as JSON")
    add("--overwrite", action="store_true", help="replace --output when it holds a previous chatbot-eval report")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add("--quiet", action="store_true", help="no progress bars, table or samples")
    add_debug_flag(p)
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """chatbot-eval: score a model on a corpus."""
    args = eval_parser().parse_args(argv)

    def body() -> None:
        import json

        from chatbot.evaluate import evaluate_model, is_eval_report
        from chatbot.fileio import atomic_write_text, check_output_file
        from chatbot.reports import print_eval_report

        if args.output:  # checked now: a bad path must not cost a whole evaluation
            check_output_file(args.output, is_ours=is_eval_report, overwrite=args.overwrite,
                              what="chatbot-eval report", flag="--output")
        _quiet_transformers()
        sampling = {k: v for k in ("temperature", "top_p", "top_k", "max_new_tokens")
                    if (v := getattr(args, k)) is not None}
        report = evaluate_model(args.model, args.data, format=args.format, split=args.split,
                                skip_bad=args.skip_bad, loss_on=args.loss_on, batch_size=args.batch_size,
                                num_samples=args.num_samples, seed=args.seed, sampling=sampling,
                                greedy=args.greedy, max_history=args.max_history, device=args.device,
                                generate=not args.no_generate, progress=not args.quiet)
        if not args.quiet:  # shown first: a disk failing at the write still leaves the results on screen
            print_eval_report(report, args.examples)
        if args.output:
            atomic_write_text(args.output, json.dumps(report, ensure_ascii=False, indent=2))

    return run_command(body, args.debug)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535] (0 = any free port), got {value}")
    return value


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatbot-serve", description="Serve a model over an OpenAI-compatible API (POST /v1/chat/completions, "
        "GET /v1/models, GET /health) with a chat page at /. Concurrent requests are decoded together.")
    add = p.add_argument
    add("--model", metavar="DIR", default="model/final",
        help="model folder written by chatbot-train (default: %(default)s)")
    add("--served-model-name", metavar="NAME", help="the model id clients see and send (default: the --model value)")
    add("--host", default="127.0.0.1",
        help="address to listen on; 0.0.0.0 opens the server to the network (default: %(default)s)")
    add("--port", type=_port, default=8000, help="port to listen on (default: %(default)s)")
    add("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on /v1/* (default: $CHATBOT_API_KEY "
        "if set, else no key)")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: %(default)s)")
    add("--max-batch", metavar="N", type=positive_int, default=16,
        help="replies decoded together in one batch (default: %(default)s)")
    add("--max-concurrent", metavar="N", type=positive_int, default=64,
        help="requests held at once, decoding or queued; more get HTTP 429 (default: %(default)s)")
    add("--max-body-bytes", metavar="N", type=positive_int, default=2**20,
        help="larger request bodies get HTTP 413 (default: %(default)s)")
    add("--max-message-chars", metavar="N", type=positive_int, default=8000,
        help="longer messages get HTTP 400 (default: %(default)s)")
    add("--cors-origin", metavar="ORIGIN", action="append", default=[],
        help="let pages from ORIGIN (e.g. https://example.com) call the API; repeatable (default: none, CORS off)")
    _add_sampling_flags(p)
    add("--max-history", metavar="N", type=positive_int, default=3,
        help="turns the model sees, the new message included (default: %(default)s)")
    add_debug_flag(p)
    return p


def serve_main(argv: list[str] | None = None) -> int:
    """`chatbot-serve`: an OpenAI-compatible HTTP server with a chat page."""
    import os

    parser = serve_parser()
    args = parser.parse_args(argv)
    if args.min_new_tokens > args.max_new_tokens:
        parser.error(f"--min-len ({args.min_new_tokens}) must be <= --max-len ({args.max_new_tokens})")
    return run_command(lambda: _serve(args, args.api_key or os.environ.get("CHATBOT_API_KEY") or None), args.debug)


def _serve(args: argparse.Namespace, api_key: str | None) -> int:
    import logging

    import uvicorn
    from transformers.utils import logging as hf_logging

    from chatbot.bot import ChatBot
    from chatbot.modeling import check_model_dir
    from chatbot.serve import ServeSettings, create_app

    check_model_dir(args.model)  # a wrong path fails now, not after the server has started
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    options = {name: getattr(args, name) for name in SamplingOptions.__dataclass_fields__ if hasattr(args, name)}
    settings = ServeSettings(args.served_model_name or args.model, max_batch=args.max_batch,
                             max_concurrent=args.max_concurrent, max_body_bytes=args.max_body_bytes,
                             max_message_chars=args.max_message_chars, api_key=api_key,
                             cors_origins=tuple(args.cors_origin))
    failures: list[Exception] = []

    def load_failed(error: Exception) -> None:
        failures.append(error)
        server.should_exit = True

    app = create_app(lambda: ChatBot.from_pretrained(args.model, args.device, max_history=args.max_history,
                                                     **options), settings, on_load_error=load_failed)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))
    server.run()
    if failures:  # run_command reports a user error (bad folder, bad option) as one line
        raise failures[0]
    return 0
