"""Stream dialogues out of corpus files. No tokenizer and no torch here.

Formats:
  txt    GPT2-chitchat: one utterance per line, dialogues separated by blank lines.
  lccc   LCCC / CDial-GPT JSON: {"train": [[utt, ...], ...], ...} or a bare list of dialogues;
         its characters are separated by spaces, which are removed.
  jsonl  one dialogue per line: a JSON list of strings, or an object with a "dialog",
         "conversation" or "turns" list.
  text   running text for language-model pretraining: each non-blank line is a passage.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("auto", "txt", "lccc", "jsonl", "text")
_JSONL_KEYS = ("dialog", "conversation", "turns")


class CorpusError(ValueError):
    """A record that cannot be read; the message names the file and line."""


@dataclass
class CorpusStats:
    """What a reader saw. `skipped` counts records by reason."""

    dialogues: int = 0
    turns: int = 0
    chars: int = 0
    skipped: Counter = field(default_factory=Counter)

    def count(self, turns: list[str]) -> None:
        self.dialogues += 1
        self.turns += len(turns)
        self.chars += sum(map(len, turns))


def detect_format(path: str | Path) -> str:
    """Guess a corpus format from the extension (.txt, .json, .jsonl), then from the first line.

    `text` is never guessed: plain running text looks like a txt corpus, so ask for it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "lccc"
    if suffix == ".txt":  # GPT2-chitchat's corpora; a first line like "[微笑]你好" is still chat text
        return "txt"
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8-sig", errors="replace").strip()
    if not first.startswith(("[", "{")):
        return "txt"
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        # The opening line of a pretty-printed JSON document, or chat text such as "[微笑]你好".
        return "lccc" if first in ("[", "{") or first.startswith(('{"', "[[", '["', "[{")) else "txt"
    one_dialogue = (isinstance(record, list) and all(isinstance(t, str) for t in record)) or (
        isinstance(record, dict) and any(k in record for k in _JSONL_KEYS))
    return "jsonl" if one_dialogue else "lccc"


def read_dialogues(path: str | Path, *, format: str = "auto", split: str | None = None,
                   skip_bad: bool = False, stats: CorpusStats | None = None) -> Iterator[list[str]]:
    """Yield each dialogue of a corpus as a list of non-empty, stripped utterances.

    Dialogues with fewer than two turns are skipped (and counted in `stats`), except in the
    `text` format, where each passage is one single-turn record.

    Args:
        path: the corpus file.
        format: one of FORMATS.
        split: for LCCC files with splits, which one ("train", "valid", "test").
        skip_bad: skip unreadable records (counted) instead of raising.
        stats: filled in as the corpus is read.

    Raises:
        FileNotFoundError: if `path` does not exist.
        CorpusError: on the first unreadable record (unless `skip_bad`), or an empty corpus.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found: {path}")
    if format not in FORMATS:
        raise ValueError(f"unknown corpus format {format!r}; expected one of {', '.join(FORMATS)}")
    if path.stat().st_size == 0:
        raise CorpusError(f"{path}: the file is empty")
    format = detect_format(path) if format == "auto" else format
    stats = stats if stats is not None else CorpusStats()
    readers = {"txt": _read_txt, "lccc": _read_lccc, "jsonl": _read_jsonl, "text": _read_text}
    min_turns = 1 if format == "text" else 2
    for turns in readers[format](path, split=split, skip_bad=skip_bad, stats=stats):
        if len(turns) < min_turns:
            stats.skipped["fewer than 2 turns"] += 1
            continue
        stats.count(turns)
        yield turns


def _lines(path: Path, skip_bad: bool, stats: CorpusStats) -> Iterator[tuple[int, str | None]]:
    """(line number, text) pairs; text is None for an undecodable line when skipping."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if not skip_bad:
                    raise CorpusError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                                      "convert the file to UTF-8, or pass --skip-bad") from None
                stats.skipped["invalid UTF-8"] += 1
                text = None
            yield number, text


def _read_txt(path: Path, *, split, skip_bad: bool, stats: CorpusStats) -> Iterator[list[str]]:
    turns: list[str] = []
    bad = False
    for _, line in _lines(path, skip_bad, stats):
        if line is None:
            bad = True  # the dialogue around an undecodable line is dropped whole
            continue
        line = line.strip()
        if line:
            turns.append(line)
            continue
        if turns and not bad:
            yield turns
        turns, bad = [], False
    if turns and not bad:
        yield turns


def _read_text(path: Path, *, split, skip_bad: bool, stats: CorpusStats) -> Iterator[list[str]]:
    for _, line in _lines(path, skip_bad, stats):
        if line is not None and line.strip():
            yield [line.strip()]


def _read_jsonl(path: Path, *, split, skip_bad: bool, stats: CorpusStats) -> Iterator[list[str]]:
    for number, line in _lines(path, skip_bad, stats):
        if line is None or not line.strip():
            continue
        try:
            yield _jsonl_turns(json.loads(line))
        except (json.JSONDecodeError, CorpusError) as e:
            reason = "malformed JSON" if isinstance(e, json.JSONDecodeError) else str(e)
            if not skip_bad:
                raise CorpusError(f"{path}:{number}: {reason}; expected a JSON list of strings or an "
                                  f"object with a {'/'.join(_JSONL_KEYS)} list (or pass --skip-bad)") from None
            stats.skipped["malformed record"] += 1


def _jsonl_turns(record) -> list[str]:
    if isinstance(record, dict):
        key = next((k for k in _JSONL_KEYS if k in record), None)
        if key is None:
            raise CorpusError(f"object has none of the keys {', '.join(_JSONL_KEYS)}")
        record = record[key]
    if not isinstance(record, list) or not all(isinstance(t, str) for t in record):
        raise CorpusError(f"wrong type: got {type(record).__name__} that is not a list of strings")
    return [t.strip() for t in record if t.strip()]


def _read_lccc(path: Path, *, split, skip_bad: bool, stats: CorpusStats) -> Iterator[list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict):
        if split is None:
            split = "train"
        if split not in data:
            raise CorpusError(f"{path}: no split {split!r}; it has {', '.join(map(str, data))} (use --split)")
        data = data[split]
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a list of dialogues, got {type(data).__name__}")
    for index, dialogue in enumerate(data):
        if not isinstance(dialogue, list) or not all(isinstance(t, str) for t in dialogue):
            if not skip_bad:
                raise CorpusError(f"{path}: dialogue #{index} (0-based) is not a list of strings; "
                                  "fix it or pass --skip-bad")
            stats.skipped["malformed record"] += 1
            continue
        yield [t for t in map(join_lccc_spaces, dialogue) if t]


_LCCC_SPACE = re.compile(r"\s+")


def join_lccc_spaces(text: str) -> str:
    """Undo LCCC's one-space-between-characters: keep one space only between two ASCII words."""
    return _LCCC_SPACE.sub(_keep_space_between_words, text.strip())


def _keep_space_between_words(m: re.Match) -> str:
    s, i, j = m.string, m.start(), m.end()
    between_words = i > 0 and j < len(s) and _word_char(s[i - 1]) and _word_char(s[j])
    return " " if between_words else ""


def _word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()
