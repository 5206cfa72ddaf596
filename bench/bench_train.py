#!/usr/bin/env python3
"""Training throughput: chatbot-train against a GPT2-chitchat-style loop, same run, same data.

Issue 3's benchmark. Non-pad tokens/s and peak RSS on CPU, 2 000 synthetic dialogues (2–8 turns
of 5–30 GB2312 characters), batch 8, max_len 150 (GPT2-chitchat's default), for a 2-layer
128-wide 4-head model (n_positions 256) and for configs/base.json. The vocabulary is ours padded
with [unusedN] lines to GPT2-chitchat's 13 317 entries, so both models have its parameter count.

  ours      chatbot.train.loop.train(): length-grouped batches, SDPA attention, fp32 on CPU
            (--precision bf16: bf16 autocast, as `chatbot-train --precision bf16`)
  baseline  GPT2-chitchat's train.py loop: shuffled batches padded to the longest, eager
            attention, fp32; the same model, optimizer, examples and number of steps

Each side runs in a fresh process (peak RSS is that process's own). Timing skips the first
--warmup steps. On a shared machine, --repeats N alternates the two sides N times and keeps each
side's fastest run. Run from the repository root:
  python bench/bench_train.py --steps 30            # both configs
  python bench/bench_train.py --configs two-layer   # only the small one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from synth_corpus import write_corpus  # noqa: E402

CONFIGS = {
    "two-layer": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256},
    "base": json.loads((REPO / "configs" / "base.json").read_text()),
}
VOCAB_SIZE = 13317  # GPT2-chitchat's vocab
# GPT2-chitchat's train.py on this kind of machine (issue 3), non-pad tokens/s.
REFERENCE = {"two-layer": 2955, "base": 166}

CHILD = r"""
import json, resource, sys, time
import torch
from chatbot.cli import _quiet_transformers
_quiet_transformers()
side, corpus, vocab, config, out, batch, steps, warmup, max_len, precision = sys.argv[1:11]
batch, steps, warmup, max_len = int(batch), int(steps), int(warmup), int(max_len)
if side == "ours":
    from chatbot.config import TrainConfig
    from chatbot.train.loop import train
    train(TrainConfig(train=corpus, vocab=vocab, config=config, output_dir=out, batch_size=batch,
                      max_steps=steps, log_steps=1, quiet=True, max_len=max_len, save_total_limit=1,
                      precision=precision))
    rows = [json.loads(l) for l in open(out + "/metrics.jsonl") if '"loss"' in l][warmup:]
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
else:
    import numpy as np
    from chatbot.data.dataset import load_dataset, make_collate
    from chatbot.model.modeling import load_gpt2_config
    from chatbot.tokenization import load_tokenizer
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    tok = load_tokenizer(vocab)
    ds = load_dataset(corpus, tok, max_len=max_len, progress=False)
    cfg = load_gpt2_config(config, tok)
    cfg._attn_implementation = "eager"  # what GPT2-chitchat's transformers version ran
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2.6e-5)
    collate = make_collate(tok)
    order = np.random.default_rng(0).permutation(len(ds))
    seconds = tokens = 0
    for step in range(steps):
        b = collate([ds[int(i)] for i in order[step * batch:(step + 1) * batch]])
        t = time.perf_counter()
        loss = model(input_ids=b["input_ids"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step(); opt.zero_grad()
        if step >= warmup:
            seconds += time.perf_counter() - t
            tokens += int(b["attention_mask"].sum())
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"tokens_per_s": tokens / seconds, "peak_rss_mb": ru.ru_maxrss / 1024, "steps": steps - warmup}))
"""


def run_side(side: str, corpus: Path, vocab: Path, config: Path, out: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), CHATBOT_CACHE=str(args.workdir / "cache"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-c", CHILD, side, str(corpus), str(vocab), str(config), str(out),
           str(args.batch_size), str(args.steps), str(args.warmup), str(args.max_len), args.precision]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def padded_vocab(workdir: Path) -> Path:
    lines = (REPO / "vocab" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    lines += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(lines))]
    path = workdir / "vocab13317.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="models to time")
    parser.add_argument("--dialogues", type=int, default=2000, help="synthetic dialogues in the corpus")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--max-len", type=int, default=150, help="tokens per example (GPT2-chitchat: 150)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per side, warmup included")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="ours only (the baseline is always fp32, as GPT2-chitchat): bf16 is CPU autocast, "
                             "fast on CPUs with AVX512-BF16 or AMX; auto is what chatbot-train picks")
    parser.add_argument("--repeats", type=int, default=1, help="alternate ours/baseline N times, keep each one's best")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/chatbot-bench-train"), help="scratch folder")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"synth-{args.dialogues}-seed{args.seed}.txt"
    write_corpus(corpus, args.dialogues, args.seed)
    vocab = padded_vocab(args.workdir)
    print(f"ours: --precision {args.precision}; baseline: fp32; load average {os.getloadavg()[0]:.1f}")
    print(f"| config | params | ours tok/s | baseline tok/s | ours / baseline | ours / GPT2-chitchat ref "
          f"| ours peak RSS | baseline peak RSS | load average |\n|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        config = args.workdir / f"{name}.json"
        config.write_text(json.dumps(CONFIGS[name]))
        params = _count_params(CONFIGS[name])
        ours, base = [], []
        for _ in range(args.repeats):
            ours.append(run_side("ours", corpus, vocab, config, args.workdir / f"out-{name}-{time.time_ns()}", args))
            base.append(run_side("baseline", corpus, vocab, config, args.workdir / "unused", args))
        ours, base = (max(runs, key=lambda r: r["tokens_per_s"]) for runs in (ours, base))
        print(f"| {name} | {params / 1e6:.1f} M | {ours['tokens_per_s']:,.0f} | {base['tokens_per_s']:,.0f} | "
              f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x | {ours['tokens_per_s'] / REFERENCE[name]:.2f}x | "
              f"{ours['peak_rss_mb']:,.0f} MB | {base['peak_rss_mb']:,.0f} MB | {os.getloadavg()[0]:.1f} |", flush=True)


def _count_params(fields: dict) -> int:
    d, layers, pos = fields["n_embd"], fields["n_layer"], fields["n_positions"]
    return VOCAB_SIZE * d + pos * d + layers * (12 * d * d + 13 * d) + 2 * d


if __name__ == "__main__":
    main()
