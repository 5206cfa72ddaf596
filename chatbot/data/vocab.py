"""Vocabulary files: the shipped standard vocabulary and a builder from a user's corpus.

A vocabulary is a BERT WordPiece `vocab.txt`: one token per line, the line number is the id.
Everything here is derived from public standards (the GB2312 character set through Python's
codec, Unicode blocks, ASCII), so `python -m chatbot.data.vocab` rebuilds `vocab/vocab.txt` byte for
byte. No torch and no tokenizer are imported here.
"""

from __future__ import annotations

import argparse
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# The head of every vocabulary written here ([PAD] first, as id 0); the speaker tokens are
# optional token_type_ids for models trained with --speaker-ids.
from chatbot.fileio import atomic_write_text
from chatbot.layout import SPECIAL_TOKENS

# Common symbols a chat contains beyond letters and punctuation. Kept explicit so the file is
# reproducible and reviewable.
_SYMBOLS = "°℃℉¥€£$¢×÷±≈≠≤≥∞√%‰§№♪♫♂♀★☆○●◎◇◆□■△▲▽▼→←↑↓♥♡☀☁☂☺☻✓✔✗✘❤"
# Emoticons block U+1F600–U+1F64F plus a handful of very common gesture/heart emoji.
_EMOJI = "".join(chr(c) for c in range(0x1F600, 0x1F650)) + "👍👎👌👏🙏💪🎉🔥💯💔💕💖🌹🤔🤣🤗🤝🤷"


def gb2312_hanzi() -> list[str]:
    """All 6 763 GB2312 hanzi (level 1 then level 2), in code order, via Python's codec."""
    chars = []
    for hi in range(0xB0, 0xF8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:  # the five unassigned cells at the end of row 0xD7
                pass
    return chars


def _punctuation() -> list[str]:
    ascii_punct = list(string.punctuation)
    # CJK symbols and punctuation (U+3001–U+303F; U+3000 is a space and never a token).
    cjk = [chr(c) for c in range(0x3001, 0x3040)]
    # Full-width forms, except letters and digits: BERT's pre-tokenizer keeps those inside words,
    # where they would need their own ## pieces; they are rare in chat and map to [UNK].
    full = [chr(c) for c in range(0xFF01, 0xFF5F) if not chr(c).isalnum()]
    general = [chr(c) for c in range(0x2010, 0x2028)]  # dashes, quotes, …
    return ascii_punct + cjk + full + general


def standard_vocab() -> list[str]:
    """The shipped vocabulary, in id order.

    The tokenizer lowercases, so only lowercase ASCII letters appear; each letter and digit
    also has a `##` continuation piece so any ASCII word or number is spelled without [UNK].
    """
    alnum = list(string.ascii_lowercase + string.digits)
    tokens = SPECIAL_TOKENS + gb2312_hanzi() + alnum + ["##" + c for c in alnum]
    symbols = list(_SYMBOLS) + list(_EMOJI)
    # BERT's pre-tokenizer does not split symbols off a word ("28℃", "ok😀"), and WordPiece turns
    # a whole word into [UNK] when one piece is missing: symbols need continuation pieces too.
    tokens += _punctuation() + symbols + ["##" + c for c in symbols]
    return _dedupe(tokens)


def corpus_vocab(texts: Iterable[str], min_freq: int = 1) -> list[str]:
    """Specials plus every character seen at least `min_freq` times, most frequent first.

    Text is lowercased first, as the tokenizer does. Characters that can occur inside a word
    (letters, digits, symbols, emoji) also get a `##` piece, which WordPiece needs to spell it.

    Raises:
        ValueError: if `min_freq` < 1.
    """
    if min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {min_freq}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text.lower())
    chars = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
             if n >= min_freq and not c.isspace() and c.isprintable()]
    # Hanzi and punctuation are always split off by the pre-tokenizer; anything else can sit
    # inside a word ("ok😀") and needs a continuation piece.
    pieces = ["##" + c for c in chars if not _is_split_alone(c)]
    return _dedupe(SPECIAL_TOKENS + chars + pieces)


def write_vocab(tokens: list[str], path: str | Path) -> Path:
    """Write one token per line (UTF-8, `\n`, trailing newline), atomically, and return the path."""
    return atomic_write_text(path, "\n".join(tokens) + "\n")


def is_vocab_file(path: Path) -> bool:
    """True for a BERT-style vocab.txt (it starts with the special tokens), which --overwrite may replace."""
    try:
        with open(path, encoding="utf-8") as f:
            head = [f.readline().strip() for _ in range(4)]
    except (OSError, UnicodeDecodeError):
        return False
    return head == SPECIAL_TOKENS[:4]


def _is_split_alone(ch: str) -> bool:
    """True for characters BERT's pre-tokenizer always makes a token of their own."""
    cp = ord(ch)
    cjk = (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2FA1F
           or 0xF900 <= cp <= 0xFAFF)
    return cjk or unicodedata.category(ch).startswith("P") or (ch.isascii() and not ch.isalnum())


def _dedupe(tokens: list[str]) -> list[str]:
    return list(dict.fromkeys(tokens))


def main(argv: list[str] | None = None) -> int:
    """`python -m chatbot.data.vocab [--output vocab/vocab.txt]`: regenerate the standard vocabulary."""
    parser = argparse.ArgumentParser(prog="python -m chatbot.data.vocab", description=main.__doc__)
    parser.add_argument("--output", default="vocab/vocab.txt", help="where to write vocab.txt")
    args = parser.parse_args(argv)
    path = write_vocab(standard_vocab(), args.output)
    print(f"wrote {len(standard_vocab())} tokens to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
