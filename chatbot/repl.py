"""The terminal chat: prompt_toolkit reads a line, `Conversation.stream` answers, rich shows it.

Two modes share one `Session`: `run_repl` for a person at a terminal (commands, streaming,
Ctrl-C to stop a reply) and `run_piped` for scripts (one reply per input line, nothing else).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from rich.console import Console
from rich.markup import escape

from chatbot.bot import ChatBot, Conversation
from chatbot.options import SamplingOptions

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass
class Session:
    """One chat session: the conversation, the current settings and the transcript."""

    bot: ChatBot
    model_name: str
    log_dir: Path = Path("chat_logs")  # where transcripts go unless /save names a file
    seed: int | None = None  # reply i uses seed + i, so a session replays exactly
    options: SamplingOptions | None = None  # None: the bot's defaults
    transcript: list[dict] = field(default_factory=list)
    started: datetime = field(default_factory=datetime.now)
    replies: int = 0
    conversation: Conversation = field(init=False)

    def __post_init__(self):
        self.options = self.options or self.bot.options
        self.conversation = Conversation(self.bot)

    def respond(self, text: str, show: Callable[[str], None] = lambda piece: None) -> str:
        """Stream the reply to `text` into `show` and record it; an interrupted reply is recorded
        as such before the interrupt goes on."""
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
            self.transcript.append({"user": text, "bot": "".join(pieces), "interrupted": True})
            raise
        self.transcript.append({"user": text, "bot": "".join(pieces)})
        return "".join(pieces)

    def to_json(self) -> dict:
        settings = {**asdict(self.options), "max_history": self.bot.max_history, "seed": self.seed}
        return {"model": self.model_name, "started": self.started.isoformat(timespec="seconds"),
                "settings": settings, "turns": self.transcript}

    def save(self, path: str | Path) -> Path:
        """Write the transcript with the settings as JSON and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    def default_path(self) -> Path:
        return self.log_dir / f"chat-{self.started:%Y%m%d-%H%M%S}.json"


def prompt_reader(history_file: str | Path | None, **session_args) -> Callable[[], str]:
    """A line reader with editing and a persistent input history (prompt_toolkit).

    `session_args` go to `PromptSession` (tests pass `input=` and `output=`).
    """
    history = None
    if history_file:
        Path(history_file).parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(history_file))
    session = PromptSession(history=history, **session_args)
    return lambda: session.prompt([("bold", "you › ")])


def run_repl(session: Session, read_line: Callable[[], str], console: Console) -> None:
    """Chat until /quit or end of input (Ctrl-D). Ctrl-C cancels the line or stops the reply."""
    console.print(f"chatting with [bold]{escape(session.model_name)}[/] · /help for commands · Ctrl-D to quit",
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
    (an empty line gets an empty line)."""
    for line in lines:
        text = line.rstrip("\r\n")
        print(session.respond(text) if text.strip() else "", file=out, flush=True)


def _show_reply(session: Session, text: str, console: Console) -> None:
    console.print("bot › ", style="bold cyan", end="")
    try:
        session.respond(text, lambda piece: console.print(piece, end="", markup=False, highlight=False))
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
    turns = session.conversation.history
    if not turns:
        console.print("[dim]no history yet[/]")
    for i, turn in enumerate(turns):
        console.print(f"{'you' if i % 2 == 0 else 'bot'} › {turn}", markup=False, highlight=False)
    return True


def _set(session: Session, arg: str, console: Console) -> bool:
    try:
        changes = parse_settings(arg.split(), session.options)
        session.options = session.bot.resolve_options(session.options, **changes)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}", highlight=False)
        return True
    console.print(" ".join(f"{k}={v}" for k, v in asdict(session.options).items()), highlight=False)
    return True


def _save(session: Session, arg: str, console: Console) -> bool:
    path = session.save(arg or session.default_path())
    console.print(f"[dim]transcript saved to {path}[/]")
    return True


def _retry(session: Session, arg: str, console: Console) -> bool:
    text = session.conversation.undo()
    if text is None:
        console.print("[dim]nothing to retry yet[/]")
    else:
        _show_reply(session, text, console)
    return True


def _quit(session: Session, arg: str, console: Console) -> bool:
    return False


# name -> (handler returning False to leave, help text)
_COMMANDS: dict[str, tuple[Callable[[Session, str, Console], bool], str]] = {
    "/help": (_help, "show this help"),
    "/reset": (_reset, "forget the conversation so far (the transcript keeps it)"),
    "/history": (_history, "show the turns the bot remembers"),
    "/set": (_set, "/set name=value ...: change sampling options; /set alone shows them"),
    "/save": (_save, "/save [FILE]: write the transcript and settings as JSON"),
    "/retry": (_retry, "sample the last reply again"),
    "/quit": (_quit, "leave (Ctrl-D does too); Ctrl-C stops a reply being written"),
}


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
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    return changes
