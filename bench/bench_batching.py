"""What batching can buy on this machine: `BatchDecoder` timed directly, without HTTP.

    PYTHONPATH=. python bench/bench_batching.py                  # base model, int8 (the CPU default here)
    PYTHONPATH=. python bench/bench_batching.py --dtype fp32 --batches 1 4

For bench_serve.py's load (prompts of 4 turns of 15 characters, 25-token replies) it measures
the time of one decode step with B rows, and the prefill time per prompt when B prompts are
read in one forward pass. A reply costs a prefill plus 25 steps; with B clients each holding
one row, its share of the machine is prefill(B) + 25 x step(B) / B. The ratio of a single
client's cost to that share is the most that serving B clients together can multiply the
tokens/s of one client by (and, by Little's law, what bounds the latency ratio from below):
`bench_serve.py` can only come close to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_generate import REPLY_TOKENS, load_base_model  # noqa: E402

from chatbot.generate.batching import BatchDecoder, NewRows  # noqa: E402
from chatbot.options import SamplingOptions  # noqa: E402
from chatbot.model.precision import prepare_model, resolve_dtype  # noqa: E402
from chatbot.tokenization import hidden_token_ids, load_tokenizer  # noqa: E402

PROMPT_TOKENS = 1 + 4 * 16  # [CLS] and 4 turns of 15 characters + [SEP]: bench_serve.py's prompts


def measure(decoder: BatchDecoder, batch: int, reps: int, rng: torch.Generator) -> tuple[float, float]:
    """(seconds of prefill per prompt, seconds per decode step) with `batch` rows, best of `reps`."""
    options = SamplingOptions(top_k=8, min_new_tokens=REPLY_TOKENS, max_new_tokens=REPLY_TOKENS)
    prefill, step = [], []
    for rep in range(reps):
        prompts = torch.randint(700, 7000, (batch, PROMPT_TOKENS), generator=rng).tolist()
        start = time.perf_counter()
        decoder.add_many([NewRows([(rep, i)], p, options, [i]) for i, p in enumerate(prompts)])
        prefill.append((time.perf_counter() - start) / batch)
        start, steps = time.perf_counter(), 0
        while len(decoder):
            decoder.step()
            steps += 1
        step.append((time.perf_counter() - start) / steps)
    return min(prefill), min(step)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or int8 (as chatbot-serve --dtype)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--reps", type=int, default=3, help="repetitions per batch size; the fastest is kept")
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(ROOT / "vocab" / "vocab.txt")
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    model = prepare_model(load_base_model(tokenizer), dtype)
    decoder = BatchDecoder(model, eos_id=tokenizer.sep_token_id, banned_ids=hidden_token_ids(tokenizer))
    rng = torch.Generator().manual_seed(0)
    measure(decoder, 1, 1, rng)  # warm-up
    print(f"base model, {dtype}, {torch.get_num_threads()} threads, {PROMPT_TOKENS}-token prompts, "
          f"{REPLY_TOKENS}-token replies")
    print("| rows B | prefill per prompt (ms) | decode step (ms) | tokens/s decoding | a reply's share (ms) "
          "| most tokens/s × 1 client |")
    print("|---|---|---|---|---|---|")
    single = None
    for batch in args.batches:
        prefill, step = measure(decoder, batch, args.reps, rng)
        share = prefill + REPLY_TOKENS * step / batch
        single = single or share
        print(f"| {batch} | {prefill * 1e3:.1f} | {step * 1e3:.1f} | {batch / step:.0f} | {share * 1e3:.1f} "
              f"| {single / share:.2f} |", flush=True)


if __name__ == "__main__":
    main()
