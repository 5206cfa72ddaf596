"""The terminal chat: prompt_toolkit reads a line, `Conversation.stream` answers, rich shows it.

Two modes share one `Session`: `run_repl` for a person at a terminal (commands, streaming,
Ctrl-C to stop a reply) and `run_piped` for scripts (one reply per input line, nothing else).
Text that came from a user or the model is shown through `printable`, so it cannot steer the terminal.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from chatbot.conversation import Conversation
from chatbot.options import SamplingOptions

if TYPE_CHECKING:  # chatbot.bot imports torch, which `chatbot-chat --help` (see `command_lines`) must not
    from chatbot.bot import ChatBot

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
# C0/C1 controls (ESC starts terminal escape sequences) and the bidi overrides that reorder a line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with control characters written as escapes (`\\x1b`), safe to print to a terminal."""
    return _UNSAFE.sub(lambda m: ascii(m.group())[1:-1], text)


def default_transcript_dir() -> Path:
    """$XDG_DATA_HOME/chatbot/transcripts, else ~/.local/share/chatbot/transcripts (the XDG default)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "chatbot" / "transcripts"


@dataclass
class Session:
    """One chat session: the conversation, the current settings and the transcript.

    The transcript is the record of what happened, in order: exchanges, and `{"event": "reset"}` and
    `{"event": "set", "options": {...}}` (what a `/set` changed) where they happened; `to_json` adds the
    settings the session started with, so the options of any turn can be read back.
    """

    bot: ChatBot
    model_name: str
    log_dir: Path = field(default_factory=default_transcript_dir)  # where save() without a path writes
    seed: int | None = None  # reply i uses seed + i, so a session replays exactly
    options: SamplingOptions | None = None  # None: the bot's defaults
    initial_options: SamplingOptions = field(init=False)  # what the transcript's "settings" record
    transcript: list[dict] = field(default_factory=list)
    started: datetime = field(default_factory=datetime.now)
    replies: int = 0
    conversation: Conversation = field(init=False)
    written: set[Path] = field(default_factory=set)  # files this session wrote: the only ones it rewrites
    own_file: Path | None = None  # its file in log_dir, named once with a unique part

    def __post_init__(self):
        self.options = self.options or self.bot.options
        self.initial_options = self.options
        self.conversation = Conversation(self.bot.generate, self.bot.settings)

    def respond(self, text: str, show: Callable[[str], None] = lambda piece: None, *,
                retry: bool = False) -> str:
        """Stream the reply to `text` into `show` and record it; an interrupted reply is recorded
        as such before the interrupt goes on. `retry`: this replaces the last exchange."""
        seed = None if self.seed is None else self.seed + self.replies
        self.replies += 1
        pieces: list[str] = []
        try:
            # closing(): a reply stopped by Ctrl-C releases the conversation at once.
            with closing(self.conversation.stream(text, seed=seed, **asdict(self.options))) as stream:
                for piece in stream:
                    pieces.append(piece)
                    show(piece)
        except KeyboardInterrupt:
            self._record(text, pieces, retry, interrupted=True)
            raise
        self._record(text, pieces, retry)
        return "".join(pieces)

    def _record(self, text: str, pieces: list[str], retry: bool, interrupted: bool = False) -> None:
        entry = {"user": text, "bot": "".join(pieces)}
        if retry:
            entry["retry"] = True
        if interrupted:
            entry["interrupted"] = True
        self.transcript.append(entry)

    def turns(self) -> list[str]:
        """The conversation since the last reset, as the bot lived it: message, reply, ..."""
        turns: list[str] = []
        for entry in self.transcript:
            if entry.get("event") == "reset":
                turns = []
            if "event" in entry:
                continue
            if entry.get("retry"):  # the retried exchange was forgotten before this one began
                del turns[-2:]
            if not entry.get("interrupted"):
                turns += [entry["user"], entry["bot"]]
        return turns

    def to_json(self) -> dict:
        settings = {**asdict(self.initial_options), "max_history": self.bot.max_history, "seed": self.seed}
        return {"model": self.model_name, "started": self.started.isoformat(timespec="seconds"),
                "settings": settings, "turns": self.transcript}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the transcript with the settings as UTF-8 JSON and return the path.

        Without `path`, into this session's own file in `log_dir`, named
        `chat-YYYYmmdd-HHMMSS-XXXXXX.json` with a random part, so sessions never share a file.

        Raises:
            FileExistsError: if `path` is a file this session did not write (it is left alone).
            OSError: if the file cannot be written.
        """
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n"
        if path is None and self.own_file is None:
            self.own_file = _write_new(self.log_dir, f"chat-{self.started:%Y%m%d-%H%M%S}-{{}}.json", text)
            self.written.add(self.own_file)
            return self.own_file
        path = Path(path).expanduser() if path is not None else self.own_file
        if path in self.written:
            _replace(path, text)
            return path
        if path.exists():
            raise FileExistsError(f"{path} exists and this session did not write it; it is left as it is, "
                                  "choose another file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:  # "x": never replace a file made meanwhile
            f.write(text)
        self.written.add(path)
        return path


def _write_new(folder: Path, pattern: str, text: str) -> Path:
    """Write `text` to a new file in `folder` named `pattern` with a random part; never overwrites."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        path = folder / pattern.format(secrets.token_hex(3))
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except FileExistsError:
            continue


def _replace(path: Path, text: str) -> None:
    """Rewrite a file this session wrote; a crash leaves the old or the new version, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prompt_reader(history_file: str | Path | None, **session_args) -> Callable[[], str]:
    """A line reader with editing and a persistent input history (prompt_toolkit).

    `session_args` go to `PromptSession` (tests pass `input=` and `output=`).
    """
    # Here, not at the top: `chatbot-chat --help` lists the slash commands from this module, and
    # must not pay for importing transformers (tokenization's import).
    from chatbot.tokenization import replace_lone_surrogates

    history = None
    if history_file:
        Path(history_file).parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(history_file))
    session = PromptSession(history=history, **session_args)
    # prompt_toolkit decodes the terminal with surrogateescape: a byte that is not UTF-8 would reach
    # the transcript as a lone surrogate, which its UTF-8 file cannot store.
    return lambda: replace_lone_surrogates(session.prompt([("bold", "you › ")]))


def run_repl(session: Session, read_line: Callable[[], str], console: Console) -> None:
    """Chat until /quit or end of input (Ctrl-D). Ctrl-C cancels the line or stops the reply."""
    console.print(f"chatting with [bold]{escape(printable(session.model_name))}[/] · /help for commands · "
                  "Ctrl-D to quit",
                  highlight=False)
    while True:
        try:
            line = read_line().strip()
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt only clears the line
        except EOFError:
            return
        if not line:
            continue
        name, _, arg = line.partition(" ")
        if name in _COMMANDS:
            if not _COMMANDS[name][0](session, arg.strip(), console):
                return
        else:
            _show_reply(session, line, console)


def run_piped(session: Session, lines: Iterable[str], out: TextIO) -> None:
    """One reply per input line, nothing else, so line N of the output answers line N of the input
    (an empty line gets an empty line). Bytes of stdin that are not text in its encoding are read as
    U+FFFD."""
    if isinstance(lines, io.TextIOWrapper):
        # Python decodes stdin strictly (one bad byte would end the chat) or, under the C locale,
        # with surrogateescape (lone surrogates, which the UTF-8 transcript cannot store).
        lines.reconfigure(errors="replace")
    for line in lines:
        text = line.rstrip("\r\n")
        print(session.respond(text) if text.strip() else "", file=out, flush=True)


def _show_reply(session: Session, text: str, console: Console, retry: bool = False) -> None:
    console.print("bot › ", style="bold cyan", end="")
    try:
        session.respond(text, lambda piece: console.print(printable(piece), end="", markup=False,
                                                          highlight=False), retry=retry)
    except KeyboardInterrupt:
        console.print(" [dim](stopped; this exchange is forgotten)[/]", end="")
    console.print()


def _help(session: Session, arg: str, console: Console) -> bool:
    for name, (_, text) in _COMMANDS.items():
        console.print(f"  [bold]{name:<9}[/]{text}", highlight=False)
    return True


def _reset(session: Session, arg: str, console: Console) -> bool:
    session.conversation.reset()
    session.transcript.append({"event": "reset"})
    console.print("[dim]conversation forgotten[/]")
    return True


def _history(session: Session, arg: str, console: Console) -> bool:
    turns = session.turns()
    if not turns:
        console.print("[dim]no history yet[/]")
        return True
    seen = min(session.bot.max_history - 1, len(turns))  # the new message is the last of max_history
    seen_text = "the bot sees none of them, only your next message"
    if seen:
        seen_text = (f"▸ marks the {seen} newest turns, which the bot sees with your next message (fewer if "
                     "they are too long for the model)")
    console.print(f"[dim]the conversation since the last /reset; {seen_text}[/]", highlight=False)
    for i, turn in enumerate(turns):
        inside = i >= len(turns) - seen
        line = Text(f"{'▸' if inside else ' '} {i + 1:>3}  {'you' if i % 2 == 0 else 'bot'}: ",
                    style="" if inside else "dim")
        line.append(printable(turn), style="" if inside else "dim")
        console.print(line, highlight=False)
    return True


def _set(session: Session, arg: str, console: Console) -> bool:
    try:
        changes = parse_settings(arg.split(), session.options)
        before = asdict(session.options)
        session.options = session.bot.resolve_options(session.options, **changes)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}", highlight=False)
        return True
    changed = {k: v for k, v in asdict(session.options).items() if v != before[k]}
    if changed:  # recorded here, so the turns before keep the options they were sampled with
        session.transcript.append({"event": "set", "options": changed})
    console.print(" ".join(f"{k}={v}" for k, v in asdict(session.options).items()), highlight=False)
    return True


def _save(session: Session, arg: str, console: Console) -> bool:
    try:
        path = session.save(arg or None)
    except OSError as e:
        console.print(f"[red]error:[/] cannot save the transcript: {escape(printable(str(e)))}",
                      highlight=False)
        return True
    console.print(f"[dim]transcript saved to {escape(printable(str(path)))}[/]", highlight=False)
    return True


def _retry(session: Session, arg: str, console: Console) -> bool:
    text = session.conversation.undo()
    if text is None:
        console.print("[dim]nothing to retry yet[/]")
    else:
        _show_reply(session, text, console, retry=True)
    return True


def _quit(session: Session, arg: str, console: Console) -> bool:
    return False


# name -> (handler returning False to leave, help text)
_COMMANDS: dict[str, tuple[Callable[[Session, str, Console], bool], str]] = {
    "/help": (_help, "show this help"),
    "/reset": (_reset, "forget the conversation so far (the transcript keeps it)"),
    "/history": (_history, "show the conversation; ▸ marks the turns the bot sees with your next message"),
    "/set": (_set, "/set name=value ...: change sampling options; /set alone shows them"),
    "/save": (_save, "/save [FILE]: write the transcript and settings as JSON "
                     "(never over a file it did not write)"),
    "/retry": (_retry, "sample the last reply again"),
    "/quit": (_quit, "leave (Ctrl-D does too); Ctrl-C stops a reply being written"),
}


def command_lines() -> list[str]:
    """The slash commands and what each does, one line each, for `chatbot-chat --help`."""
    return [f"{name:<9}{text}" for name, (_, text) in _COMMANDS.items()]


def parse_settings(pairs: list[str], current: SamplingOptions) -> dict:
    """Turn `["temperature=0.7", "top_k=5"]` into typed values, using the current value's type.

    Raises:
        ValueError: for a pair without `=`, an unknown name, or a value of the wrong type.
    """
    known = asdict(current)
    changes = {}
    for pair in pairs:
        name, eq, raw = pair.partition("=")
        if not eq or name not in known:
            raise ValueError(f"expected name=value with name one of {', '.join(known)}, got {pair!r}")
        kind = type(known[name])
        if kind is bool:
            if raw.lower() not in _TRUE | _FALSE:
                raise ValueError(f"{name} must be true or false, got {raw!r}")
            changes[name] = raw.lower() in _TRUE
            continue
        try:
            changes[name] = kind(raw)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"{name} must be {expected}, got {raw!r}") from None
    return changes
