#!/usr/bin/env python3
"""Peak memory of `chatbot-preprocess` on awkward corpora (issue 8, "Bounded memory").

Each case runs `chatbot-preprocess CORPUS -o DIR --quiet` in a fresh process and reads that
process's peak RSS (VmHWM). The cases, on seeded synthetic dialogues (bench/synth_corpus.py):
  txt          N dialogues in GPT2-chitchat's txt format: the baseline
  lccc         the same N dialogues as LCCC JSON ({"train": [[...], ...]}, characters space-separated)
  small        a small txt corpus (--small dialogues)
  small+line   the same plus one dialogue holding a single --line-mb MB line
Ratios are against `txt` (for lccc) and `small` (for small+line) of the same code in the same run.
With --baseline DIR (another checkout, e.g. `git worktree add /tmp/before <commit>`) every case
runs on that code too, for a before/after table.

  python bench/bench_memory.py --dialogues 1000000 --seed 0 --workdir /tmp/chatbot-bench-memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_preprocess import PEAK_RSS, make_corpus  # noqa: E402

# The child reports its own VmHWM (peak RSS of its address space; see PEAK_RSS for why not ru_maxrss).
CHILD = PEAK_RSS + r"""
import json, sys, time
from chatbot.cli import preprocess_main
t0 = time.perf_counter()
rc = preprocess_main(sys.argv[2:])
seconds = time.perf_counter() - t0
json.dump({"rc": rc, "seconds": seconds, "peak_kb": peak_rss_kb()}, open(sys.argv[1], "w"))
sys.exit(rc)
"""


def txt_to_lccc(src: Path, dst: Path) -> Path:
    """Write the dialogues of a txt corpus as LCCC JSON, one dialogue at a time (no corpus in memory)."""
    if dst.exists():
        return dst
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        out.write('{"train": [\n')
        first, turns = True, []
        for line in [*f, "\n"]:
            if line.strip():
                turns.append(" ".join(line.strip()))  # LCCC separates characters by spaces
                continue
            if turns:
                out.write(("" if first else ",\n") + json.dumps(turns, ensure_ascii=False))
                first, turns = False, []
        out.write("\n]}\n")
    return dst


def with_long_line(src: Path, dst: Path, megabytes: float) -> Path:
    """`src` plus one more dialogue whose second turn is a single line of `megabytes` MB."""
    if not dst.exists():
        line = "我很好" * int(megabytes * 1e6 / 9)  # 9 bytes of UTF-8 per repeat
        dst.write_text(src.read_text(encoding="utf-8") + f"\n\n你好\n{line}\n", encoding="utf-8")
    return dst


def measure(code: Path, corpus: Path, workdir: Path, vocab: Path, name: str) -> dict:
    """Run chatbot-preprocess from checkout `code` on `corpus`; wall seconds and peak RSS MB."""
    result, log = workdir / f"{name}.json", workdir / f"{name}.log"
    output = workdir / f"enc-{name}-{time.time_ns()}"  # a new folder each run, removed after it
    cmd = [sys.executable, "-c", CHILD, str(result), str(corpus), "-o", str(output),
           "--vocab", str(vocab), "--quiet"]
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(code)),
                              cwd=workdir)
    wall = time.perf_counter() - t
    shutil.rmtree(output, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return {"wall_s": wall, "peak_mb": json.loads(result.read_text())["peak_kb"] / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=1_000_000, help="dialogues in the txt/lccc pair")
    parser.add_argument("--small", type=int, default=20_000, help="dialogues in the small corpus (default 20 000)")
    parser.add_argument("--line-mb", type=float, default=10.0, help="size of the long line in MB (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/chatbot-bench-memory"))
    parser.add_argument("--vocab", type=Path, default=REPO / "vocab" / "vocab.txt")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure the same cases with")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    txt, _ = make_corpus(args.workdir, args.dialogues, args.seed, check_shared=False)
    small, _ = make_corpus(args.workdir, args.small, args.seed, check_shared=False)
    corpora = {"txt": txt, "lccc": txt_to_lccc(txt, txt.with_suffix(".json")), "small": small,
               "small+line": with_long_line(small, args.workdir / f"small-{args.small}-line.txt", args.line_mb)}
    codes = {"this checkout": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rows = []
    for label, code in codes.items():
        got = {}
        for case, corpus in corpora.items():
            print(f"[{label}] {case} ...", flush=True)
            got[case] = measure(code, corpus, args.workdir, args.vocab, f"{label.split()[0]}-{case}")
        base = {"lccc": got["txt"], "small+line": got["small"]}
        for case, m in got.items():
            ratio = f"{m['peak_mb'] / base[case]['peak_mb']:.2f}x" if case in base else "1.00x (base)"
            rows.append(f"| {label} | {case} | {corpora[case].stat().st_size / 1e6:,.1f} | {m['wall_s']:.1f} "
                        f"| {m['peak_mb']:,.0f} | {ratio} |")
    print("\n| code | case | corpus MB | wall s | peak RSS MB | RSS vs base |\n|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
