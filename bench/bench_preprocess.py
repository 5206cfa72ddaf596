#!/usr/bin/env python3
"""Benchmark `chatbot-preprocess` on seeded synthetic corpora (issue 2, "Benchmark").

For each corpus size it measures, each in its own fresh Python process:
  1. `chatbot-preprocess CORPUS -o DIR`: wall time, dialogues/s and the process's peak RSS (VmHWM);
     with --workers > 1, the peak PSS of the process and its workers together instead;
  2. the bare Rust tokenizer on the same utterances (`backend_tokenizer.encode_batch`, and
     `encode_batch_fast`, which is what chatbot uses), encode time only;
  3. opening the encoded folder with `TokenDataset`: load time, touching every example length,
     10 000 random examples, a full pass, and RSS.
and prints markdown tables, with ratios to the bare tokenizer and to GPT2-chitchat's preprocess.py.

Run from anywhere; it uses the checkout it lives in (PYTHONPATH is set for the children):
  python bench/bench_preprocess.py --sizes 20000 100000 1000000 --seed 0 --workdir /tmp/chatbot-bench
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from synth_corpus import write_corpus  # noqa: E402

SHARED_SYNTH = REPO.parent / "shared" / "bench" / "synth_corpus.py"  # the team's copy, when present
# GPT2-chitchat's preprocess.py on this kind of machine (issue 2): dialogues -> (dialogues/s, peak RSS MB)
REFERENCE = {20_000: (325, 497), 100_000: (70, 828)}
CHUNK = 2048  # dialogues per bare encode_batch call, as chatbot.data.preprocess.CHUNK

# Each child writes one JSON object to the file named by argv[1]. Peak RSS is the child's VmHWM, the
# high-water mark of its own address space. Not ru_maxrss: Linux carries a parent's high-water mark over
# fork and exec, so a child spawned by a big parent (pytest, a notebook) reports at least the parent's.
PEAK_RSS = r"""
def peak_rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
"""

PREPROCESS_CHILD = PEAK_RSS + r"""
import json, resource, sys, time
t0 = time.perf_counter()
from chatbot.cli import preprocess_main
rc = preprocess_main(sys.argv[2:])
t1 = time.perf_counter()
# CPU of the process and of its --workers (reaped when the pool closed)
cpu = sum(ru.ru_utime + ru.ru_stime for ru in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
json.dump({"rc": rc, "seconds_in_process": t1 - t0, "cpu": cpu, "peak_rss_kb": peak_rss_kb()},
          open(sys.argv[1], "w"))
sys.exit(rc)
"""

BARE_CHILD = r"""
import json, resource, sys, time
from chatbot.data.corpus import read_dialogues
from chatbot.tokenization import load_tokenizer
def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
out, corpus, vocab, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = load_tokenizer(vocab).backend_tokenizer
dialogues = list(read_dialogues(corpus))
batches = [[u for d in dialogues[i:i + chunk] for u in d] for i in range(0, len(dialogues), chunk)]
result = {"dialogues": len(dialogues), "utterances": sum(map(len, batches))}
for name in ("encode_batch", "encode_batch_fast"):
    encode = getattr(tok, name)
    encode(batches[0], add_special_tokens=False)  # warm up the thread pool
    t, c = time.perf_counter(), cpu()
    for batch in batches:
        encode(batch, add_special_tokens=False)  # results dropped at once, as a real pipeline would
    result[name], result[name + "_cpu"] = time.perf_counter() - t, cpu() - c
json.dump(result, open(out, "w"))
"""

LOAD_CHILD = PEAK_RSS + r"""
import json, sys, time
import numpy as np
def rss_kb():  # (anonymous, file-backed): mapped pages of tokens.bin count as RssFile, shared page cache
    with open("/proc/self/status") as f:
        fields = dict(l.split(":", 1) for l in f)
    return [int(fields[k].split()[0]) for k in ("RssAnon", "RssFile")]
out, folder = sys.argv[1], sys.argv[2]
from chatbot.data.dataset import TokenDataset
before = rss_kb()
t = time.perf_counter(); ds = TokenDataset(folder); load = time.perf_counter() - t
t = time.perf_counter(); total = int(ds.lengths.sum()); n = len(ds); lengths = time.perf_counter() - t
idx = np.random.default_rng(0).integers(0, n, 10_000)
t = time.perf_counter(); s = sum(len(ds[int(i)]) for i in idx); rand = time.perf_counter() - t
after_random = rss_kb()
t = time.perf_counter(); s = sum(len(ds[i]) for i in range(n)); full = time.perf_counter() - t
json.dump({"examples": n, "tokens": total, "load": load, "lengths": lengths, "random_10k": rand, "full_pass": full,
           "rss_before_kb": before, "rss_after_random_kb": after_random, "rss_after_full_kb": rss_kb(),
           "peak_rss_kb": peak_rss_kb()}, open(out, "w"))
"""


def run_child(code: str, args: list[str], result: Path, log: Path, sample_tree: bool = False) -> tuple[dict, float]:
    """Run `python -c code result args...` with this checkout importable; returns (its JSON, wall seconds).

    With `sample_tree`, the JSON gains `tree_pss_peak_kb`: the largest `tree_pss_kb` seen, sampled every 0.1 s.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t, peak = time.perf_counter(), 0
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", code, str(result), *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
        while proc.poll() is None:
            if sample_tree:
                peak = max(peak, tree_pss_kb(proc.pid))
            time.sleep(0.1)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"child failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return json.loads(result.read_text()) | ({"tree_pss_peak_kb": peak} if sample_tree else {}), wall


def tree_pss_kb(root: int) -> int:
    """Proportional set size of process `root` and its children (a pool's workers), in KiB.

    Pages the processes share count once in the total, where summing their RSS (or ru_maxrss) would count a
    forked worker's copy-on-write view of its parent's memory again. Library pages shared with processes
    outside the tree count for their share only.
    """
    total = 0
    for pid in [root, *(int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == root)]:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):  # it exited meanwhile
            pass
    return total


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
    except (OSError, IndexError, ValueError):
        return None


def make_corpus(workdir: Path, n: int, seed: int, check_shared: bool) -> tuple[Path, str]:
    """Generate (or reuse) the corpus; optionally compare it byte for byte with the shared generator."""
    path = workdir / f"synth-{n}-seed{seed}.txt"
    if not path.exists():
        t = time.perf_counter()
        write_corpus(path, n, seed)
        print(f"generated {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
    if not check_shared:
        return path, ""
    if not SHARED_SYNTH.exists():
        return path, f"shared generator not found at {SHARED_SYNTH}; not compared"
    other = workdir / f"shared-{n}-seed{seed}.txt"
    subprocess.run([sys.executable, str(SHARED_SYNTH), "--n", str(n), "--seed", str(seed), "--out", str(other)],
                   check=True, stdout=subprocess.DEVNULL)
    same = filecmp.cmp(path, other, shallow=False)
    other.unlink()
    if not same:
        sys.exit(f"{path} differs from the output of {SHARED_SYNTH}: the recipes diverged")
    return path, f"{n:,}-dialogue corpus byte-identical to {SHARED_SYNTH.name} (seed {seed})"


def bench_size(n: int, args, check_shared: bool) -> dict:
    """All measurements for one corpus size; ours and the bare tokenizer alternate `--repeat` times."""
    work = args.workdir
    corpus, check = make_corpus(work, n, args.seed, check_shared)
    encoded = work / f"enc-{n}"
    cmd = [str(corpus), "-o", str(encoded), "--vocab", str(args.vocab), "--max-len", str(args.max_len),
           "--workers", str(args.workers), "--quiet"]
    runs = []
    for rep in range(args.repeat):
        print(f"[{n:,}] run {rep + 1}/{args.repeat}: chatbot-preprocess ...", flush=True)
        shutil.rmtree(encoded, ignore_errors=True)
        ours, wall = run_child(PREPROCESS_CHILD, cmd, work / f"ours-{n}.json", work / f"ours-{n}.log",
                               sample_tree=args.workers > 1)
        meta = json.loads((encoded / "meta.json").read_text(encoding="utf-8"))
        print(f"[{n:,}] run {rep + 1}/{args.repeat}: bare tokenizer ...", flush=True)
        bare, _ = run_child(BARE_CHILD, [str(corpus), str(args.vocab), str(CHUNK)], work / f"bare-{n}.json",
                            work / f"bare-{n}.log")
        if bare["dialogues"] != meta["dialogues"] or meta["dialogues"] != n:
            sys.exit(f"dialogue counts differ: generated {n}, bare run {bare['dialogues']}, ours {meta['dialogues']}")
        runs.append({"wall": wall, "meta_seconds": meta["seconds"], **ours, "bare": bare})
    print(f"[{n:,}] TokenDataset ...", flush=True)
    load, _ = run_child(LOAD_CHILD, [str(encoded)], work / f"load-{n}.json", work / f"load-{n}.log")
    result = {"dialogues": n, "corpus_bytes": corpus.stat().st_size, "check": check, "examples": meta["examples"],
              "tokens": meta["tokens"], "encoded_bytes": sum(f.stat().st_size for f in encoded.iterdir()),
              "runs": runs, "load": load}
    if not args.keep:
        shutil.rmtree(encoded)
        corpus.unlink()
    return result


def best(runs: list[dict], key) -> float:
    """The fastest of the repeats: on a shared machine, slower runs measure the neighbours."""
    return min(key(r) for r in runs)


def mb(kb: float) -> str:
    return f"{kb / 1024:,.0f}"


def tables(results: list[dict], workers: int) -> str:
    peak_col = "peak RSS MB" if workers == 1 else "peak PSS MB (main + workers, sampled every 0.1 s)"
    lines = [
        f"| dialogues | corpus MB | wall s | dialogues/s (whole command) | dialogues/s (read+encode+write loop) "
        f"| CPU s | {peak_col} | bare encode_batch d/s | bare encode_batch_fast d/s | bare CPU s (batch / fast) "
        f"| ours/bare (whole / loop) | ours/bare_fast (loop) | µs/dialogue (whole / loop) "
        f"| vs GPT2-chitchat speed | vs GPT2-chitchat RSS |",
        "|" + "---:|" * 15,
    ]
    for r in results:
        n, runs = r["dialogues"], r["runs"]
        wall, loop = best(runs, lambda x: x["wall"]), best(runs, lambda x: x["meta_seconds"])
        cpu = best(runs, lambda x: x["cpu"])
        bare = n / best(runs, lambda x: x["bare"]["encode_batch"])
        fast = n / best(runs, lambda x: x["bare"]["encode_batch_fast"])
        bare_cpu = best(runs, lambda x: x["bare"]["encode_batch_cpu"])
        fast_cpu = best(runs, lambda x: x["bare"]["encode_batch_fast_cpu"])
        peak = max(x["peak_rss_kb"] if workers == 1 else x["tree_pss_peak_kb"] for x in runs)
        rate, loop_rate = n / wall, n / loop
        ref = REFERENCE.get(n)
        speed = f"{rate / ref[0]:.1f}×" if ref else "—"
        rss = f"{peak / 1024 / ref[1]:.2f}×" if ref else "—"
        lines.append(f"| {n:,} | {r['corpus_bytes'] / 1e6:,.1f} | {wall:.1f} | {rate:,.0f} | {loop_rate:,.0f} "
                     f"| {cpu:.1f} | {mb(peak)} | {bare:,.0f} | {fast:,.0f} | {bare_cpu:.1f} / {fast_cpu:.1f} | {rate / bare:.0%} / {loop_rate / bare:.0%} "
                     f"| {loop_rate / fast:.0%} | {1e6 * wall / n:.0f} / {1e6 * loop / n:.0f} | {speed} | {rss} |")
    lines += [
        "",
        "| dialogues | examples | tokens | encoded MB | TokenDataset() ms | all lengths ms | 10k random examples ms "
        "| full pass s | anon RSS MB: before / after load+10k random / after full pass "
        "| file-backed RSS growth MB (mapped pages of tokens.bin) | peak RSS MB |",
        "|" + "---:|" * 11,
    ]
    for r in results:
        ld = r["load"]
        lines.append(f"| {r['dialogues']:,} | {ld['examples']:,} | {ld['tokens']:,} | {r['encoded_bytes'] / 1e6:,.1f} "
                     f"| {1e3 * ld['load']:.1f} | {1e3 * ld['lengths']:.1f} | {1e3 * ld['random_10k']:.0f} "
                     f"| {ld['full_pass']:.2f} | {mb(ld['rss_before_kb'][0])} / {mb(ld['rss_after_random_kb'][0])} / "
                     f"{mb(ld['rss_after_full_kb'][0])} | {mb(ld['rss_after_full_kb'][1] - ld['rss_before_kb'][1])} | {mb(ld['peak_rss_kb'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark chatbot-preprocess against the bare Rust tokenizer "
                                                 "and GPT2-chitchat's figures (issue 2).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000],
                        help="corpus sizes in dialogues (default: 20000 100000 1000000)")
    parser.add_argument("--seed", type=int, default=0, help="corpus generator seed (default 0)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/chatbot-bench"),
                        help="where corpora, encoded folders and child logs go (default /tmp/chatbot-bench)")
    parser.add_argument("--vocab", type=Path, default=REPO / "vocab" / "vocab.txt",
                        help="vocab.txt to encode with (default: the shipped vocab/vocab.txt)")
    parser.add_argument("--max-len", type=int, default=256, help="chatbot-preprocess --max-len (default 256)")
    parser.add_argument("--workers", type=int, default=1, help="chatbot-preprocess --workers (default 1)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of chatbot-preprocess and of the bare tokenizer per size, alternating; "
                             "the tables show the fastest (default 3)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated corpora and encoded folders (default: delete them after each size)")
    parser.add_argument("--no-check-shared", action="store_true",
                        help="skip the byte-for-byte comparison with ../shared/bench/synth_corpus.py")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this JSON file")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print the tables of a run saved with --json")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(saved["machine"] + "\n\n" + tables(saved["results"], saved.get("workers", 1)))
        return 0
    if min(args.sizes) < 1 or args.workers < 1 or args.repeat < 1 or args.max_len < 4:
        parser.error("--sizes, --workers and --repeat must be >= 1 and --max-len >= 4")
    args.workdir.mkdir(parents=True, exist_ok=True)

    sizes = sorted(args.sizes)
    results = [bench_size(n, args, check_shared=not args.no_check_shared and i == 0) for i, n in enumerate(sizes)]
    header = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"workers={args.workers}, max_len={args.max_len}, seed={args.seed}")
    print("\n" + header)
    for r in results:
        if r["check"]:
            print(r["check"])
    print("\n" + tables(results, args.workers))
    if args.json:
        args.json.write_text(json.dumps({"machine": header, "workers": args.workers, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
