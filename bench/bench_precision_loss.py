#!/usr/bin/env python3
"""bf16 autocast against fp32 on the CPU: the loss curves and the time per step, same run, same seed.

Trains the same model on the bundled sample (data/train.txt, validating on data/valid.txt every
epoch) with `chatbot-train --precision fp32` and `--precision bf16`, each in a fresh process,
for --steps optimizer steps with the main command's other defaults (batch 16, lr 5e-4, cosine
schedule over the --steps, seed 42). Prints both training-loss curves, their gap after smoothing
(a moving mean over --smooth logged windows), the validation losses, and the time per step
(median over the logged windows, so the epochs' validation and checkpoint do not count; the
whole run's wall time is shown beside it). --repeats alternates fp32/bf16 runs and keeps each
one's fastest time; the losses are the same every run.

  python bench/bench_precision_loss.py                       # configs/tiny.json, 300 steps
  python bench/bench_precision_loss.py --config small --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16")


def run_training(precision: str, args, out: Path) -> dict:
    """One chatbot-train run in a fresh process: its metrics rows and its wall time."""
    argv = ["--config", args.config, "--precision", precision, "--max-steps", str(args.steps),
            "--log-steps", str(args.log_steps), "--output-dir", str(out), "--quiet", "--save-total-limit", "1"]
    code = "import sys; from chatbot.cli import train_main; sys.exit(train_main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", CHATBOT_CACHE=str(out.parent / "cache"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"--precision {precision} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    # A window's seconds per step; the first one holds the warm-up.
    per_step = [r["tokens"] / r["tokens_per_s"] / args.log_steps for r in train_rows[1:]]
    return {"train": {r["step"]: r["loss"] for r in train_rows},
            "valid": {r["step"]: r["valid_loss"] for r in rows if "valid_loss" in r},
            "s_per_step": statistics.median(per_step), "wall": wall}


def smooth(curve: dict[int, float], width: int) -> dict[int, float]:
    """Mean of the last `width` logged values at each step."""
    steps = sorted(curve)
    return {s: statistics.fmean(curve[t] for t in steps[max(0, i - width + 1):i + 1]) for i, s in enumerate(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="bundled config name or GPT2Config JSON (default: tiny)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--log-steps", type=int, default=10, help="steps per logged loss")
    parser.add_argument("--smooth", type=int, default=5, help="logged values in the moving mean")
    parser.add_argument("--print-every", type=int, default=30, help="steps between printed rows")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each precision, alternating (fastest kept)")
    args = parser.parse_args()
    print(f"config {args.config}, {args.steps} steps, load average {os.getloadavg()[0]:.1f}")
    runs: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for i in range(args.repeats):
            for precision in PRECISIONS:
                runs[precision].append(run_training(precision, args, Path(tmp) / f"{precision}-{i}"))
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    s32, s16 = smooth(fp32["train"], args.smooth), smooth(bf16["train"], args.smooth)
    print("| step | fp32 loss | bf16 loss | fp32 smoothed | bf16 smoothed | relative gap (smoothed) |\n"
          "|---:|---:|---:|---:|---:|---:|")
    for step in sorted(s32):
        if step % args.print_every == 0 or step == args.steps:
            print(f"| {step} | {fp32['train'][step]:.4f} | {bf16['train'][step]:.4f} | {s32[step]:.4f} | "
                  f"{s16[step]:.4f} | {abs(s16[step] - s32[step]) / s32[step]:.2%} |")
    gaps = {s: abs(s16[s] - s32[s]) / s32[s] for s in s32}
    worst = max(gaps, key=gaps.get)
    print(f"max relative gap of the smoothed training loss: {gaps[worst]:.3%} (step {worst})")
    print("validation loss (step: fp32 / bf16): " + ", ".join(
        f"{s}: {fp32['valid'][s]:.4f} / {bf16['valid'][s]:.4f}" for s in sorted(fp32["valid"])))
    best = {p: min(r["s_per_step"] for r in runs[p]) for p in PRECISIONS}
    wall = {p: min(r["wall"] for r in runs[p]) for p in PRECISIONS}
    print(f"time per step: fp32 {best['fp32'] * 1e3:.0f} ms, bf16 {best['bf16'] * 1e3:.0f} ms "
          f"(bf16 / fp32 = {best['bf16'] / best['fp32']:.2f}); whole run: fp32 {wall['fp32']:.0f} s, "
          f"bf16 {wall['bf16']:.0f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
