"""Stream dialogues out of corpus files. No tokenizer and no torch here.

Formats:
  txt    GPT2-chitchat: one utterance per line, dialogues separated by blank lines.
  lccc   LCCC / CDial-GPT JSON: {"train": [[utt, ...], ...], ...} or a bare list of dialogues;
         its characters are separated by spaces, which are removed.
  jsonl  one dialogue per line: a JSON list of strings, or an object with a "dialog",
         "conversation" or "turns" list.
  text   running text for language-model pretraining: each non-blank line is a passage.

Memory stays bounded whatever the input: lines are read in pieces of at most MAX_LINE_BYTES (a
longer chat line is cut, a longer passage split), LCCC JSON is parsed as a stream with ijson, JSON
nested deeper than MAX_JSON_DEPTH is refused before any parser recurses into it, and every turn is
cut to MAX_TURN_CHARS before it reaches the tokenizer, which would otherwise spend gigabytes on one
10 MB line. A corpus must be a regular file: it is read more than once, which a pipe cannot be,
and a device such as /dev/zero would never end.
"""

from __future__ import annotations

import io
import json
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ijson

FORMATS = ("auto", "txt", "lccc", "jsonl", "text")
_JSONL_KEYS = ("dialog", "conversation", "turns")
# A turn is cut to this many characters: tokens never outnumber characters, so this keeps far more
# than any model's length (max_len counts tokens), and no tokenizer call sees a huge string.
MAX_TURN_CHARS = 16_384
# Lines are read in pieces this long (a UTF-8 character is at most 4 bytes): a cut one holds > MAX_TURN_CHARS.
MAX_LINE_BYTES = 4 * MAX_TURN_CHARS + 4
MAX_JSONL_BYTES = 1 << 20  # a JSON-lines record longer than 1 MiB is refused, not read whole
# The formats nest 3 levels at most ({"train": [[utterance]]}); one level more still reaches the record
# checks, so a dialogue wrong by one level is reported (or skipped) as that dialogue. Deeper is refused:
# json.loads recurses once per level (RecursionError) and ijson builds a path string per level (GBs).
MAX_JSON_DEPTH = 4
_BOM = b"\xef\xbb\xbf"


class CorpusError(ValueError):
    """A corpus or record that cannot be read; the message names the file (and line)."""


@dataclass
class CorpusStats:
    """What a reader saw. `skipped` counts records by reason."""

    dialogues: int = 0
    turns: int = 0
    chars: int = 0
    cut_turns: int = 0  # turns cut to MAX_TURN_CHARS (or lines to MAX_LINE_BYTES) while reading
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
        first = f.readline(MAX_LINE_BYTES).decode("utf-8-sig", errors="replace").strip()
    if not first.startswith(("[", "{")):
        return "txt"
    if nests_too_deep(first):  # no record is this deep; the LCCC reader says where the file goes wrong
        return "lccc"
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
        CorpusError: if `path` is not a regular file, on the first unreadable record (unless
            `skip_bad`), or for an empty corpus.
    """
    path = Path(path)
    check_corpus_file(path)
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
        if any(len(t) > MAX_TURN_CHARS for t in turns):
            stats.cut_turns += sum(len(t) > MAX_TURN_CHARS for t in turns)
            turns = [t[:MAX_TURN_CHARS] for t in turns]
        stats.count(turns)
        yield turns


def check_corpus_file(path: Path) -> None:
    """Check that `path` is a regular file (a link to one will do) before anything opens it.

    Opening a FIFO blocks until someone writes to it, /dev/zero never ends, and a corpus is read
    several times (format detection, the reader, LCCC's explanation pass, the cache's size and
    mtime), which a pipe cannot give.

    Raises:
        FileNotFoundError: if `path` does not exist.
        CorpusError: naming what `path` is instead.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus not found: {path}") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise CorpusError(f"{path}: not a file but a folder; name a corpus file in it")
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
    raise CorpusError(f"{path}: not a regular file but {kind}; a corpus is read several times from its "
                      "start, so save it to a file first (e.g. zcat corpus.gz > corpus.txt)")


_FILE_KINDS = {stat.S_IFIFO: "a pipe (FIFO)", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def nests_too_deep(text: str) -> bool:
    """True when the JSON `text` nests deeper than MAX_JSON_DEPTH, found without recursing.

    Brackets inside strings do not count. A malformed `text` gets an answer too, for the parser
    to then report it as malformed.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # nearly every record: too few brackets to nest deeper, one pass in C
    depth = 0
    for m in _BRACKET_OR_STRING.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


# A string (escapes included; an unterminated one runs to the end) is matched whole, so that the
# brackets inside it are skipped.
_BRACKET_OR_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|$)|[\[\]{}]', re.S)


def _lines(path: Path, skip_bad: bool, stats: CorpusStats, *, limit: int = MAX_LINE_BYTES,
           split_long: bool = False) -> Iterator[tuple[int, str | None, bool]]:
    """(line number, text, cut) triples; text is None for an undecodable line when skipping.

    A line longer than `limit` bytes is never held whole: with `split_long` its pieces come one
    by one (same line number), otherwise only its first piece comes, with `cut` set.
    """
    with open(path, "rb") as f:
        for number, raw, cut in _raw_lines(f, limit, split_long):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if not skip_bad:
                    raise CorpusError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                                      "convert the file to UTF-8, or pass --skip-bad") from None
                stats.skipped["invalid UTF-8"] += 1
                text = None
            yield number, text, cut


def _raw_lines(f: io.BufferedReader, limit: int, split_long: bool) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, cut) for lines read `limit` bytes at a time. A longer line comes in
    pieces ending on whole UTF-8 characters (`split_long`), or as its first piece, `cut`."""
    number, carry, continued = 0, b"", False
    while chunk := f.readline(limit):
        number += not continued
        data, carry = carry + chunk, b""
        continued = len(chunk) == limit and not chunk.endswith(b"\n")
        if continued:
            end = _utf8_boundary(data)
            data, carry = data[:end], data[end:]
        yield number, data, continued and not split_long
        if continued and not split_long:
            while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
                pass
            carry, continued = b"", False
    if carry:  # a character cut by the end of the file: the decoder reports it
        yield number, carry, False


def _utf8_boundary(data: bytes) -> int:
    """Where an incomplete UTF-8 character at the end of `data` starts (len(data) if none)."""
    i = len(data) - 1
    while i >= 0 and len(data) - i < 4 and data[i] & 0xC0 == 0x80:  # continuation bytes
        i -= 1
    if i < 0:
        return len(data)
    lead = data[i]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return i if len(data) - i < need else len(data)


def _read_txt(path: Path, *, split, skip_bad: bool, stats: CorpusStats) -> Iterator[list[str]]:
    turns: list[str] = []
    bad = False
    for _, line, _ in _lines(path, skip_bad, stats):
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
    for _, line, _ in _lines(path, skip_bad, stats, split_long=True):
        if line is not None and line.strip():  # a long passage comes as several, none of them cut
            line = line.strip()
            yield from ([line[i:i + MAX_TURN_CHARS]] for i in range(0, len(line), MAX_TURN_CHARS))


def _read_jsonl(path: Path, *, split, skip_bad: bool, stats: CorpusStats) -> Iterator[list[str]]:
    for number, line, cut in _lines(path, skip_bad, stats, limit=MAX_JSONL_BYTES):
        if line is None or not line.strip():
            continue
        try:
            if cut:
                raise CorpusError(f"record longer than {MAX_JSONL_BYTES >> 20} MiB")
            if nests_too_deep(line):
                raise CorpusError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            yield _jsonl_turns(json.loads(line))
        except (json.JSONDecodeError, CorpusError) as e:
            reason = "malformed JSON" if isinstance(e, json.JSONDecodeError) else str(e)
            if not skip_bad:
                raise CorpusError(f"{path}:{number}: {reason}; expected a JSON list of strings or an object "
                                  f"with a {'/'.join(_JSONL_KEYS)} list (or pass --skip-bad)") from None
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
    """Stream the dialogues of an LCCC file; only one dialogue is in memory at a time."""
    with open(path, "rb") as raw:
        start = len(_BOM) if raw.read(len(_BOM)) == _BOM else 0
        raw.seek(start)
        head = raw.read(4096).lstrip()[:1]
        raw.seek(start)
        is_splits = head == b"{"
        split = (split or "train") if is_splits else split
        f = _TrackedReader(raw, start)
        events = ijson.parse(_shallow_events(ijson.basic_parse(f), path, f))
        index = -1
        try:
            for index, dialogue in enumerate(ijson.items(events, f"{split}.item" if is_splits else "item")):
                if not isinstance(dialogue, list) or not all(isinstance(t, str) for t in dialogue):
                    if not skip_bad:
                        raise CorpusError(f"{path}: dialogue #{index} (0-based) is not a list of strings; "
                                          "fix it or pass --skip-bad")
                    stats.skipped["malformed record"] += 1
                    continue
                yield [t for t in map(join_lccc_spaces, dialogue) if t]
        except ijson.JSONError as e:
            raise CorpusError(f"{path}: {_json_error(e, f)}") from None
    if index < 0:  # nothing at all: say why (a second pass, only in this case)
        _explain_no_dialogues(path, start, split if is_splits else None)


def _shallow_events(events: Iterator[tuple[str, object]], path: Path, f: _TrackedReader):
    """ijson's events without paths, refusing JSON nested deeper than MAX_JSON_DEPTH before ijson.parse
    sees it: parsing a file itself, ijson builds the path of every event of a 64 KiB read at once, one
    string per level (10**5 levels: ~10 GB)."""
    depth = 0
    for event, value in events:
        if event in ("start_array", "start_map"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise CorpusError(
                    f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels {_where(f)}; an LCCC corpus "
                    'is {"train": [[utterance, ...], ...]} or [[utterance, ...], ...]: fix the file, or give '
                    "its format with --format")
        elif event in ("end_array", "end_map"):
            depth -= 1
        yield event, value


class _TrackedReader:
    """A binary file that remembers which bytes and lines the chunk it last handed out covers."""

    def __init__(self, f: io.BufferedReader, offset: int):
        self._f = f
        self.start = self.end = offset
        self.first_line = self.lines = 1

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.start, self.first_line = self.end, self.lines
        self.end += len(data)
        self.lines += data.count(b"\n")
        return data


def _json_error(e: Exception, f: _TrackedReader) -> str:
    reason, *context = str(e).splitlines() or ["malformed JSON"]
    near = f", near {context[0].strip()!r}" if context and context[0].strip() else ""
    kind = "not valid UTF-8" if "UTF8" in reason else "malformed JSON"
    return f"{kind} ({reason.strip().rstrip('.')}{near}) {_where(f)}"


def _where(f: _TrackedReader) -> str:
    """Where in the file the chunk the parser last read lies."""
    return f"within lines {f.first_line:,}-{f.lines:,} (bytes {f.start:,}-{f.end:,})"


def _explain_no_dialogues(path: Path, start: int, split: str | None) -> None:
    """Raise CorpusError when a file holding no dialogue is not simply an empty list of them."""
    with open(path, "rb") as raw:
        raw.seek(start)
        events = ijson.parse(raw)
        try:
            _, event, _ = next(events)
            if split is None:
                if event != "start_array":
                    got = _JSON_TYPES.get(event, event)
                    raise CorpusError(f"{path}: expected a list of dialogues, got {got}")
                return
            keys = []
            for prefix, event, value in events:
                if prefix == "" and event == "map_key":
                    keys.append(value)
                elif prefix == split and len(keys) and keys[-1] == split:
                    if event != "start_array":
                        raise CorpusError(f"{path}: split {split!r} should be a list of dialogues, got "
                                          f"{_JSON_TYPES.get(event, event)}")
                    return
        except ijson.JSONError:
            return  # the first pass already reported malformed JSON
    raise CorpusError(f"{path}: no split {split!r}; it has {', '.join(map(str, keys))} (use --split)")


_JSON_TYPES = {"start_map": "dict", "start_array": "list", "string": "str", "number": "number",
               "boolean": "bool", "null": "null"}


_LCCC_SPACE = re.compile(r"\s+")
_SPACE_BETWEEN_WORDS = re.compile(r"[0-9A-Za-z]\s+[0-9A-Za-z]")


def join_lccc_spaces(text: str) -> str:
    """Undo LCCC's one-space-between-characters: keep one space only between two ASCII words."""
    if _SPACE_BETWEEN_WORDS.search(text) is None:  # the common case, in C: no space is kept
        return "".join(text.split())
    return _LCCC_SPACE.sub(_keep_space_between_words, text.strip())


def _keep_space_between_words(m: re.Match) -> str:
    s, i, j = m.string, m.start(), m.end()
    between_words = i > 0 and j < len(s) and _word_char(s[i - 1]) and _word_char(s[j])
    return " " if between_words else ""


def _word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()
