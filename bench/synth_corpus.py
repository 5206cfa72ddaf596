#!/usr/bin/env python3
"""Seeded synthetic chitchat corpus in GPT2-chitchat's train.txt format, for benchmarks.

Same recipe, byte for byte, as the team's shared `bench/synth_corpus.py` (kept here so the
benchmark runs from a clean clone): one utterance per line, dialogues separated by one blank
line, no trailing newline; 2..8 utterances per dialogue, each 5..30 characters drawn uniformly
from the 3 755 GB2312 level-1 hanzi (0xB0A1..0xD7F9), all from `random.Random(seed)`.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def gb2312_level1() -> list[str]:
    """The 3 755 level-1 hanzi in GB2312 code order."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            if hi == 0xD7 and lo > 0xF9:
                break
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                pass
    return chars


def write_corpus(path: str | Path, n: int, seed: int = 0, *, min_utt: int = 2, max_utt: int = 8,
                 min_chars: int = 5, max_chars: int = 30) -> dict:
    """Write `n` dialogues to `path`; returns counts. Draws from the RNG in the shared script's order."""
    chars = gb2312_level1()
    rng = random.Random(seed)
    randint, choice = rng.randint, rng.choice
    n_utt = n_chr = 0
    with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
        for i in range(n):
            if i:
                f.write("\n\n")
            k = randint(min_utt, max_utt)
            utts = []
            for _ in range(k):
                length = randint(min_chars, max_chars)
                utts.append("".join([choice(chars) for _ in range(length)]))
                n_chr += length
            n_utt += k
            f.write("\n".join(utts))
    return {"dialogues": n, "utterances": n_utt, "chars": n_chr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="number of dialogues")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output train.txt path")
    args = parser.parse_args()
    counts = write_corpus(args.out, args.n, args.seed)
    print(f"wrote {counts['dialogues']} dialogues, {counts['utterances']} utterances, "
          f"{counts['chars']} chars to {args.out}")


if __name__ == "__main__":
    main()
