"""One way to declare a command's options: dataclass fields with defaults and help, made into flags here.

    @dataclass(frozen=True)
    class ChatConfig:
        model: str = opt("model/final", "model folder written by chatbot-train", metavar="DIR")

`build_parser(prog, description, ChatConfig, SamplingOptions)` gives every field a flag
(`max_history` -> `--max-history`, which `--max_history` also reaches, as GPT2-chitchat spells
it) plus `--config-file FILE`, and `parse_options` turns the command line into one instance per
class. A field's `aliases` are GPT2-chitchat's names for it (`--max_history_len`); `--help` lists
them in one closing paragraph, not beside each flag. A flag the command does not know gets one
`error:` line: why, for GPT2-chitchat flags that mean nothing here (`FOREIGN_FLAGS`), else the
nearest known flag. A config file (JSON, or YAML) holds option names and values, e.g. a run's
`training_args.json`; flags given on the command line override it.

No torch here, so `--help` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

MISSING = dataclasses.MISSING


def opt(default=MISSING, help: str = "", *, flag: str | None = None, aliases: Sequence[str] = (),
        metavar: str | None = None, choices: Sequence[str] | None = None,
        parse: Callable[[str], object] | None = None, positional: bool = False, short: str | None = None):
    """A dataclass field that `build_parser` makes into a flag.

    Args:
        default: the value when neither a flag nor a config file gives one (none: the flag is required).
        help: what the option does, shown by `--help`.
        flag: the flag's name when it is not the field's (`--no-repeat-ngram` for `no_repeat_ngram_size`).
        aliases: other accepted spellings, listed at the end of `--help`: `"--topk"`; `"--no-cuda=cpu"`, a
            flag without a value that sets the option to `cpu`; `("--topp", parse)`, a spelling whose
            value `parse` reads (where the other program's values mean something else).
        parse: turns the flag's text into a value, raising ValueError with a message for a bad one.
        positional: a positional argument taking one or more values (the field is a list).
        short: a one-letter spelling such as `-o`.
    """
    metadata = {"help": help, "flag": flag, "aliases": tuple(aliases), "metavar": metavar, "choices": choices,
                "parse": parse, "positional": positional, "short": short}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive_int(text: str) -> int:
    """`parse` for counts: the message names the value and the allowed range."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def port_number(text: str) -> int:
    """`parse` for a TCP port."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"must be in [0, 65535] (0 = any free port), got {value}")
    return value


@dataclass(frozen=True)
class CommonOptions:
    """Options every command has."""

    debug: bool = opt(False, "on an error, also print the Python traceback")


# GPT2-chitchat flags (interact.py, interact_mmi.py, train.py, preprocess.py) that no command here takes
# under any name: why, and what to do instead. Refused rather than ignored, so that no one believes a
# setting took effect; a command that does take one of these names (e.g. chatbot-train's --vocab_path)
# never gets here.
FOREIGN_FLAGS = {
    "--log-path": "is GPT2-chitchat's log file; chatbot prints to the terminal (chatbot-train also writes "
                  "OUTPUT_DIR/metrics.jsonl): drop it",
    "--log": "switches GPT2-chitchat's log file; chatbot keeps none: drop it",
    "--ignore-index": "is fixed at -100 here, GPT2-chitchat's default: drop it",
    "--gpu0-bsz": "sizes GPT2-chitchat's batch on GPU 0; here every process takes --batch-size "
                  "(several GPUs: torchrun --nproc_per_node N --no-python chatbot-train): drop it",
    "--eps": "is not an option here (AdamW uses PyTorch's default eps, 1e-8): drop it",
    "--val-num": "holds out a number of examples in GPT2-chitchat; here use --valid-ratio SHARE "
                 "(e.g. 0.01) or --valid FILE",
    "--writer-dir": "is GPT2-chitchat's TensorBoard folder; here use --report-to tensorboard "
                    "(events go to OUTPUT_DIR/runs)",
    "--raw": "asks GPT2-chitchat to tokenize the corpus first; chatbot-train reads text corpora itself: "
             "drop it",
    "--train-tokenized-path": "is GPT2-chitchat's tokenized cache; chatbot-train reads text corpora itself "
                              "(or a chatbot-preprocess folder, as --train): drop it",
    "--train-mmi-tokenized-path": "is GPT2-chitchat's tokenized cache; chatbot-train reads text corpora "
                                  "itself: drop it",
    "--model-config": "names a GPT2Config JSON: chatbot-train takes it as --config; a model folder for "
                      "chatting holds its own config.json: drop it",
    "--vocab-path": "names a vocabulary: a model folder for chatting holds its own tokenizer: drop it",
    "--voca-path": "names a vocabulary: a model folder for chatting holds its own tokenizer: drop it",
    "--batch-size": "is GPT2-chitchat's number of MMI candidates when chatting; here use --candidates N "
                    "with --mmi-model DIR",
    "--train-path": "is the corpus: chatbot-preprocess takes corpus files as arguments "
                    "(chatbot-preprocess data/train.txt -o DIR), chatbot-train as --train",
}


class CommandParser(argparse.ArgumentParser):
    """argparse that also accepts underscore spellings (`--batch_size 8` is `--batch-size 8`) and answers
    a bad command line with one `error:` line and a short usage line, not the whole usage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_LineFormatter, **kwargs)
        self.alias_targets: dict[str, str] = {}  # alias -> what it stands for: "--top-k", "--device cpu"

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        args[:end] = [_hyphenate(a) for a in args[:end]]
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unknown(args, extras))
        return namespace

    def _unknown(self, args: list[str], extras: list[str]) -> str:
        """What is wrong with the first argument argparse could not place, as typed by the user."""
        flag = next((x for x in extras if x.startswith("-")), None)
        if flag is None:
            return f"unexpected argument {extras[0]!r}"
        name = flag.partition("=")[0]
        typed = next(a for a in args if _hyphenate(a).partition("=")[0] == name).partition("=")[0]
        if name in FOREIGN_FLAGS:
            return f"{typed} {FOREIGN_FLAGS[name]}"
        known = [s for s in self._option_string_actions if s.startswith("--")]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {self.alias_targets.get(close[0], close[0])}?)" if close else ""
        return f"unknown flag {typed}{hint}"

    def error(self, message: str):
        positionals = " ".join(f"{a.metavar or a.dest} ..." for a in self._actions if not a.option_strings)
        self.exit(2, f"error: {message}\nusage: {self.prog} [options] {positionals}".rstrip()
                  + f"; see {self.prog} --help\n")


class _LineFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own, so an epilog can be a list."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            lead = indent + line[:len(line) - len(line.lstrip())]
            lines.append(textwrap.fill(line.strip(), width, initial_indent=lead,
                                       subsequent_indent=lead + "  ", break_on_hyphens=False))
        return "\n".join(lines)


def _hyphenate(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("_", "-") + eq + value


def flag_name(f: dataclasses.Field) -> str:
    """The flag a field is set by: `--batch-size` for `batch_size`, unless the field names another."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def build_parser(prog: str, description: str, *classes: type, epilog: str | None = None) -> CommandParser:
    """A parser with one flag per field of `classes`, plus `--config-file`; the fields' aliases are
    listed after `epilog`."""
    # No abbreviations: with aliases and several helpers adding flags, a prefix would change meaning.
    parser = CommandParser(prog=prog, description=description, allow_abbrev=False)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in _option_fields(cls):
            _add_field(parser, f, hints[f.name])
    parser.add_argument("--config-file", metavar="FILE",
                        help="read options from a JSON or YAML file of name: value pairs (a run's "
                             "training_args.json works); flags given here override it. Flags may also be "
                             "spelled with underscores, e.g. --batch_size")
    aliases = ", ".join(f"{a} for {target}" for a, target in parser.alias_targets.items())
    parser.epilog = "\n\n".join(filter(None, [epilog, aliases and f"Other names, most of them "
                                                               f"GPT2-chitchat's: {aliases}."]))
    return parser


def _add_field(parser: CommandParser, f: dataclasses.Field, kind) -> None:
    meta = f.metadata
    has_default = f.default is not MISSING or f.default_factory is not MISSING
    default = f.default if f.default is not MISSING else (f.default_factory() if has_default else None)
    shown = meta["help"]
    if default not in (None, False, []) and "default" not in shown and kind is not bool:
        shown += f" (default: {default})"
    if meta["positional"]:
        parser.add_argument(f.name, nargs="*", default=default, help=shown, metavar=meta["metavar"])
        return
    # BooleanOptionalAction reads the value off the spelling, so a bool's aliases need actions of their own.
    plain = [a for a in meta["aliases"] if isinstance(a, str) and "=" not in a and kind is not bool]
    names = [n for n in (meta["short"], flag_name(f)) if n]
    if kind is bool:
        settings = dict(action=argparse.BooleanOptionalAction, default=default)
    elif typing.get_origin(kind) is list:  # a repeatable flag
        settings = dict(action="append", default=default, metavar=meta["metavar"])
    else:
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        metavar = meta["metavar"] or (None if meta["choices"] else {int: "N", float: "X"}.get(base, "PATH"))
        settings = dict(type=_argparse_type(meta["parse"]) if meta["parse"] else base, default=default,
                        choices=meta["choices"], metavar=metavar)
    action = parser.add_argument(*names, dest=f.name, help=shown, required=not has_default, **settings)
    # A plain alias reaches the flag's own action (so a required flag may be given by its alias) without
    # being one of its option_strings, which --help and argparse's messages show.
    for alias in plain:
        assert alias not in parser._option_string_actions, f"{alias} is declared twice"
        parser._option_string_actions[alias] = action
    for alias in meta["aliases"]:
        if alias not in plain:
            _add_alias(parser, f.name, alias, settings)
        parser.alias_targets[_alias_name(alias)] = flag_name(f) + (" " + alias.partition("=")[2]
                                                                   if alias not in plain and "=" in alias
                                                                   else "")


def _add_alias(parser: CommandParser, dest: str, alias, settings: dict) -> None:
    """A spelling with an action of its own, hidden from the flag list: a bool's, `("--topp", parse)` or
    `"--no-cuda=cpu"`."""
    hidden = dict(settings, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    if isinstance(alias, tuple):
        alias, parse = alias
        hidden["type"] = _argparse_type(parse)
    name, eq, value = alias.partition("=")
    if eq:
        hidden = dict(dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, action="store_const",
                      const=settings["type"](value))
    parser.add_argument(name, **hidden)


def _argparse_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:  # argparse shows an ArgumentTypeError's own message after the flag's name
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def parse_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *classes: type):
    """Parse `argv` (after the `--config-file`, if any) into one instance of each of `classes`.

    A class may list keys its config files may hold but that are not options (e.g. values a run
    derived and recorded) in a `derived_keys` class attribute; they are skipped.

    Exits with code 2 and an `error:` line, as argparse does, for a bad flag, a bad file or a value
    a class rejects (its ValueError names the flag).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Not a prefix match: --config is another flag of chatbot-train.
    pre = CommandParser(prog=parser.prog, add_help=False, allow_abbrev=False)
    pre.add_argument("--config-file")
    config_file = pre.parse_known_args(argv)[0].config_file
    from_file = []
    if config_file:
        try:
            from_file = _file_flags(parser, config_file, classes)
        except (OSError, ValueError) as e:
            parser.error(f"--config-file {config_file}: {e}")
    args = parser.parse_args(from_file + argv)
    try:
        return tuple(cls(**{f.name: getattr(args, f.name) for f in _option_fields(cls)}) for cls in classes)
    except ValueError as e:  # checked before any work starts, reported like argparse's own errors
        parser.error(_as_flags(str(e), [f for cls in classes for f in _option_fields(cls)], from_file + argv))


def _option_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _alias_name(alias) -> str:
    """`--topk` of each form of alias `opt` takes."""
    return (alias[0] if isinstance(alias, tuple) else alias).partition("=")[0]


def _as_flags(message: str, fields: list[dataclasses.Field], argv: list[str]) -> str:
    """`message` with option names (`max_new_tokens`) spelled as the flag the user typed (`--max-len`)."""
    for f in fields:
        if "_" in f.name:  # one-word names are also plain words in messages
            names = [flag_name(f), *(_alias_name(a) for a in f.metadata["aliases"])]
            typed = [n for n in names if any(a == n or a.startswith(n + "=") for a in map(_hyphenate, argv))]
            message = re.sub(rf"\b{f.name}\b", typed[-1] if typed else names[0], message)
    return message


def read_config_file(path: str | Path) -> dict:
    """The name -> value pairs of a JSON or YAML (.yaml, .yml) file.

    Raises:
        OSError: if the file cannot be read.
        ValueError: if it is not a mapping in that format.
    """
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        import yaml  # a dependency of transformers, so always there

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"not valid YAML: {e}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e}); YAML files must end in .yaml or .yml") from None
    if not isinstance(values, dict):
        raise ValueError(f"expected a mapping of option names to values, got {type(values).__name__}")
    return values


def _file_flags(parser: argparse.ArgumentParser, path: str, classes: Sequence[type]) -> list[str]:
    """The config file's values as command-line arguments, so they get the flags' own checks."""
    fields = {f.name: f for cls in classes for f in _option_fields(cls)}
    derived = {k for cls in classes for k in getattr(cls, "derived_keys", ())}
    values = {k.replace("-", "_"): v for k, v in read_config_file(path).items()}
    unknown = sorted(set(values) - set(fields) - derived)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    argv = []
    for name, value in values.items():
        if name in derived or value is None:
            continue
        f = fields[name]
        if f.metadata["positional"]:
            texts = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            parser.set_defaults(**{name: texts})
        elif isinstance(value, list):
            argv += [f"{flag_name(f)}={v}" for v in value]
        elif isinstance(value, bool):
            argv.append(flag_name(f) if value else "--no-" + flag_name(f)[2:])
        else:
            argv.append(f"{flag_name(f)}={value}")
    return argv
