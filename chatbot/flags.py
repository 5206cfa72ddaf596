"""One way to declare a command's options: dataclass fields with defaults and help, made into flags here.

    @dataclass(frozen=True)
    class ChatConfig:
        model: str = opt("model/final", "model folder written by chatbot-train", metavar="DIR")

`build_parser(prog, description, ChatConfig, SamplingOptions)` gives every field a flag
(`max_history` -> `--max-history`, which `--max_history` also reaches, as GPT2-chitchat spells
it) plus `--config-file FILE`, and `parse_options` turns the command line into one instance per
class. A config file (JSON, or YAML) holds option names and values, e.g. a run's
`training_args.json`; flags given on the command line override it.

No torch here, so `--help` and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
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
        aliases: other accepted spellings, shown beside the flag.
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


class CommandParser(argparse.ArgumentParser):
    """argparse that also accepts underscore spellings: `--batch_size 8` is `--batch-size 8`."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        args[:end] = [_hyphenate(a) for a in args[:end]]
        return super().parse_known_args(args, namespace)


def _hyphenate(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("_", "-") + eq + value


def flag_name(f: dataclasses.Field) -> str:
    """The flag a field is set by: `--batch-size` for `batch_size`, unless the field names another."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def build_parser(prog: str, description: str, *classes: type, epilog: str | None = None) -> CommandParser:
    """A parser with one flag per field of `classes`, plus `--config-file`."""
    # No abbreviations: with aliases and several helpers adding flags, a prefix would change meaning.
    parser = CommandParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in _option_fields(cls):
            _add_field(parser, f, hints[f.name])
    parser.add_argument("--config-file", metavar="FILE",
                        help="read options from a JSON or YAML file of name: value pairs (a run's "
                             "training_args.json works); flags given here override it. Flags may also be "
                             "spelled with underscores, e.g. --batch_size")
    return parser


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, kind) -> None:
    meta = f.metadata
    has_default = f.default is not MISSING or f.default_factory is not MISSING
    default = f.default if f.default is not MISSING else (f.default_factory() if has_default else None)
    shown = meta["help"]
    if default not in (None, False, []) and "default" not in shown and kind is not bool:
        shown += f" (default: {default})"
    if meta["positional"]:
        parser.add_argument(f.name, nargs="*", default=default, help=shown, metavar=meta["metavar"])
        return
    names = [n for n in (meta["short"], flag_name(f), *meta["aliases"]) if n]
    if kind is bool:
        parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                            help=shown)
        return
    if typing.get_origin(kind) is list:  # a repeatable flag
        parser.add_argument(*names, dest=f.name, action="append", default=default, help=shown,
                            metavar=meta["metavar"])
        return
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    convert = _argparse_type(meta["parse"]) if meta["parse"] else base
    metavar = meta["metavar"] or (None if meta["choices"] else {int: "N", float: "X"}.get(base, "PATH"))
    parser.add_argument(*names, dest=f.name, type=convert, default=default, help=shown,
                        choices=meta["choices"], metavar=metavar, required=not has_default)


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
    pre = CommandParser(add_help=False, allow_abbrev=False)  # --config is another flag of chatbot-train
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


def _as_flags(message: str, fields: list[dataclasses.Field], argv: list[str]) -> str:
    """`message` with option names (`max_new_tokens`) spelled as the flag the user typed (`--max-len`)."""
    for f in fields:
        if "_" in f.name:  # one-word names are also plain words in messages
            names = [flag_name(f), *f.metadata["aliases"]]
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
