#!/usr/bin/env python3
"""LoRA against full fine-tuning (issue 20): peak memory, tokens/s, checkpoint size, validation perplexity.

First a base model: configs/base.json (12x768) trained from scratch on the bundled sample for --base-steps
steps (`chatbot-train` defaults otherwise), so that both sides start from the same weights that already
know something. Then, from that base's final/, the same --steps steps, batch, seed, precision and schedule:
  full          every weight trained, at --full-lr
  lora          LoRA r=--r on c_attn, at the same learning rate as full
  lora-tuned    the same LoRA at --lora-lr (LoRA's few weights usually need a higher rate)
Each side runs `train(TrainConfig(...))` in a fresh process that reports its own peak RSS (VmHWM: the
model, its gradients and optimizer state, activations, and the save of checkpoint-N and final/), and that
peak less what the process held once torch and transformers were imported ("of which training").
tokens/s is over the logged windows after the first (warm-up); checkpoint size is checkpoint-N/ on disk;
perplexity is on the sample's validation dialogues after the last step. Ratios are against `full` in
the same run; run it on an otherwise idle core:

  taskset -c 1 python bench/bench_lora.py --workdir /tmp/chatbot-bench-lora   # 13 min on one core
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_preprocess import PEAK_RSS  # noqa: E402

CHILD = PEAK_RSS + r"""
import json, sys
from chatbot.config import TrainConfig
from chatbot.train.loop import train
imported_kb = peak_rss_kb()  # torch and transformers, before any model
result = train(TrainConfig(**json.loads(sys.argv[2])))
params = {id(p): p for p in result.model.parameters()}.values()
json.dump({"peak_kb": peak_rss_kb(), "imported_kb": imported_kb,
           "trainable": sum(p.numel() for p in params if p.requires_grad)}, open(sys.argv[1], "w"))
"""


def run_side(name: str, fields: dict, workdir: Path) -> dict:
    """Train one side in its own process; its figures from the child's report and its output folder."""
    out = workdir / name
    shutil.rmtree(out, ignore_errors=True)
    fields = dict(fields, output_dir=str(out), quiet=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), CHATBOT_CACHE=str(workdir / "cache"), HF_HUB_OFFLINE="1")
    report = workdir / f"{name}.json"
    done = subprocess.run([sys.executable, "-c", CHILD, str(report), json.dumps(fields)], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(report.read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if "tokens_per_s" in r]
    windows = windows[1:] or windows  # the first window holds the warm-up
    checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return {"peak_mb": figures["peak_kb"] / 1024,
            "training_mb": (figures["peak_kb"] - figures["imported_kb"]) / 1024,
            "tokens_per_s": sum(r["tokens"] for r in windows) / sum(r["tokens"] / r["tokens_per_s"]
                                                                    for r in windows),
            "checkpoint_mb": sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()) / 2**20,
            "valid_ppl": [r["valid_ppl"] for r in rows if "valid_ppl" in r][-1],
            "trainable": figures["trainable"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-steps", type=int, default=100, help="steps training the base from scratch")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps per side")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--full-lr", type=float, default=1e-4, help="learning rate of full and lora")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of lora-tuned")
    parser.add_argument("--precision", default="auto", help="--precision of every run (auto: bf16 where the "
                                                            "CPU runs it natively)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/chatbot-bench-lora"), help="scratch folder")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    common = dict(config="base", batch_size=args.batch_size, seed=0, precision=args.precision, patience=0,
                  save_minutes=0, log_steps=10, save_total_limit=1)
    base = args.workdir / "base"
    if not (base / "final" / "model.safetensors").is_file():
        print(f"training the base: configs/base.json, {args.base_steps} steps on the bundled sample", flush=True)
        run_side("base", dict(common, max_steps=args.base_steps), args.workdir)
    tuned = dict(common, pretrained=str(base / "final"), max_steps=args.steps)
    lora = dict(tuned, lora_r=args.r)
    sides = {"full": dict(tuned, lr=args.full_lr), "lora": dict(lora, lr=args.full_lr),
             "lora-tuned": dict(lora, lr=args.lora_lr)}
    results = {}
    for name, fields in sides.items():
        print(f"{name}: {args.steps} steps, lr {fields['lr']:g}", flush=True)
        results[name] = run_side(name, fields, args.workdir)
    full = results["full"]
    print(f"\n12x768 (configs/base.json) from a base trained {args.base_steps} steps on the sample; "
          f"{args.steps} steps, batch {args.batch_size}, --precision {args.precision}, one CPU core "
          f"(taskset; the machine's other core busy with another job)\n")
    print("| side | lr | trainable | peak RSS MB | of which training MB | tokens/s | checkpoint MB | valid ppl |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {sides[name]['lr']:g} | {r['trainable']:,} | {r['peak_mb']:,.0f} "
              f"({r['peak_mb'] / full['peak_mb']:.2f}x) | {r['training_mb']:,.0f} "
              f"({r['training_mb'] / full['training_mb']:.2f}x) | {r['tokens_per_s']:,.0f} "
              f"({r['tokens_per_s'] / full['tokens_per_s']:.2f}x) | {r['checkpoint_mb']:,.1f} "
              f"({r['checkpoint_mb'] / full['checkpoint_mb']:.2%}) | {r['valid_ppl']:.2f} "
              f"({r['valid_ppl'] / full['valid_ppl'] - 1:+.1%}) |")


if __name__ == "__main__":
    main()
