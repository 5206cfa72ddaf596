"""Conversations: one history per user, turns taken one at a time, idle ones forgotten.

    settings = ConversationSettings(max_history=3, max_conversations=10_000)
    store = ConversationStore(bot.generate, settings)
    store.get("user-42").reply("你好")   # remembers the exchange

`ChatBot.conversation(user_id)` hands these out. A conversation is given the function that
generates a reply (`ChatBot.generate`), not the bot, so this module needs no model: generation
stays in `chatbot.bot`, history and turn-taking live here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from chatbot.layout import MAX_HISTORY

log = logging.getLogger(__name__)
_now = time.monotonic  # one clock for conversation ages; tests replace it

# (text, history oldest first, **options) -> the reply's text in pieces; touches no stored history.
Generate = Callable[..., Iterator[str]]


@dataclass(frozen=True)
class ConversationSettings:
    """How conversations keep history and share one bot (`ChatBot`'s arguments of the same names).

    Raises:
        ValueError: naming the setting, for a value out of range.
    """

    max_history: int = MAX_HISTORY  # turns the model sees, the new message included (>= 1)
    stream_timeout: float = 30.0  # seconds an unread reply stream holds its turn while another turn waits
    max_conversations: int | None = 10_000  # per-user conversations kept, least recently used forgotten first
    conversation_ttl: float | None = None  # seconds after which a conversation nobody fetched is forgotten

    def __post_init__(self):
        if self.max_history < 1:
            raise ValueError("max_history must be >= 1 (it counts the message itself), "
                             f"got {self.max_history}")
        for name in ("max_conversations", "conversation_ttl", "stream_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                none = "" if name == "stream_timeout" else " or None"
                raise ValueError(f"{name} must be > 0{none}, got {value}")


class ConversationStore:
    """One `Conversation` per user id, safe to use from many threads."""

    def __init__(self, generate: Generate, settings: ConversationSettings):
        """Args:
            generate: what conversations reply with (`ChatBot.generate`).
            settings: shared by every conversation of the store.
        """
        self._generate, self._settings = generate, settings
        self._by_user: OrderedDict[str, Conversation] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, user_id: str) -> Conversation:
        """The conversation of `user_id`, created on first use, the same object until it is
        forgotten (see `max_conversations` and `conversation_ttl`)."""
        with self._lock:
            conv = self._by_user.pop(user_id, None) or Conversation(self._generate, self._settings)
            self._by_user[user_id] = conv
            conv.last_used = _now()
            self._forget_idle()
            return conv

    def _forget_idle(self) -> None:
        """Drop the least recently used conversations beyond the limits; one replying stays."""
        now, limit, ttl = _now(), self._settings.max_conversations, self._settings.conversation_ttl
        for _ in range(len(self._by_user)):
            user_id, conv = next(iter(self._by_user.items()))
            too_many = limit is not None and len(self._by_user) > limit
            expired = ttl is not None and now - conv.last_used > ttl
            if not (too_many or expired):
                return
            if conv.busy:  # in use, so not idle: count it as used now
                conv.last_used = now
                self._by_user.move_to_end(user_id)
            else:
                del self._by_user[user_id]


class Conversation:
    """One user's history. Turns of one conversation run one at a time, in order.

    A reply holds the conversation's turn from its first piece until it ends, is closed or is
    garbage-collected. A stream that is kept but no longer read holds it only while nobody else
    waits: once another turn has waited `stream_timeout` seconds on it, that turn goes ahead,
    and the stale stream raises `RuntimeError` if it is read again.
    """

    def __init__(self, generate: Generate, settings: ConversationSettings):
        """Args: as `ConversationStore`."""
        self._generate, self._settings = generate, settings
        self._turns: list[str] = []
        self._cond = threading.Condition()
        self._holder: object | None = None  # the token of the turn in progress
        self._paused_at: float | None = None  # when the holder last handed out a piece, unread since
        self.last_used = _now()

    @property
    def history(self) -> list[str]:
        """The turns kept, oldest first: message, reply, ... Only the newest `max_history + 1`
        are kept: those the model sees with the next message, and those a retry needs."""
        with self._cond:
            return list(self._turns)

    @property
    def busy(self) -> bool:
        """Whether a turn is in progress."""
        with self._cond:
            return self._holder is not None

    def reply(self, text: str, **options) -> str:
        """Answer `text` and remember the exchange (same options as `ChatBot.reply`)."""
        return "".join(self.stream(text, **options))

    def stream(self, text: str, **options) -> Iterator[str]:
        """Yield the reply in pieces. The exchange is remembered only once the reply is complete,
        so an interrupted reply (Ctrl-C, or the caller stopping early) leaves no trace."""
        with self._turn() as token:
            pieces = []
            for piece in self._generate(text, list(self._turns), **options):
                pieces.append(piece)
                self._pause(token)
                yield piece
                self._resume(token)
            keep = self._settings.max_history + 1
            with self._cond:
                self._turns = [*self._turns, text, "".join(pieces)][-keep:]

    def reset(self) -> None:
        """Forget the history."""
        with self._turn():
            self._turns = []

    def undo(self) -> str | None:
        """Drop the last exchange and return its message (None if there is none), e.g. to retry it."""
        with self._turn():
            if not self._turns:
                return None
            text = self._turns[-2]
            self._turns = self._turns[:-2]
            return text

    @contextmanager
    def _turn(self) -> Iterator[object]:
        """Wait for the turn in progress to end, or to leave its stream unread too long; then hold it."""
        token = object()
        timeout = self._settings.stream_timeout
        with self._cond:
            while self._holder is not None:
                if self._paused_at is None:  # the holder is generating: it notifies when it pauses or ends
                    self._cond.wait()
                    continue
                left = timeout - (_now() - self._paused_at)
                if left <= 0:
                    log.warning("a reply stream was left unread for %.0f s while a new turn waited; "
                                "the new turn goes ahead (close() streams you stop reading)", timeout)
                    break
                self._cond.wait(left)
            self._holder, self._paused_at = token, None
        try:
            yield token
        finally:
            with self._cond:
                if self._holder is token:
                    self._holder, self._paused_at = None, None
                    self._cond.notify_all()

    def _pause(self, token: object) -> None:
        with self._cond:
            if self._holder is token:
                self._paused_at = _now()
                self._cond.notify_all()

    def _resume(self, token: object) -> None:
        with self._cond:
            if self._holder is not token:
                raise RuntimeError(f"this reply stream was left unread for more than "
                                   f"{self._settings.stream_timeout} s while another turn of the "
                                   "conversation waited, so that turn went ahead; "
                                   "read streams to the end or close() them")
            self._paused_at = None
