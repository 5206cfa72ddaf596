"""Reply latency on CPU: our KV-cached `generate_tokens` in fp32, bf16 and int8 against
GPT2-chitchat's interact.py loop, all in one run.

    PYTHONPATH=. python bench/bench_generate.py                 # a few minutes on 2 cores
    PYTHONPATH=. python bench/bench_generate.py --reps 1 --max-turns 4   # a quick look

Variants (`--variants`): `fp32-dynamic` is issue 4's generator (transformers' DynamicCache,
which copies the cache at every step), kept as the reference the others are divided by;
`fp32`, `bf16` and `int8` are `generate_tokens` today (a preallocated KV cache) on the model
converted by `chatbot.model.precision.prepare_model`, as `chatbot-chat --dtype` does.

The model is `configs/base.json` (12 layers, 768 wide, 12 heads, n_positions 1024; the same
fields inline where that file is absent) with random weights and the shipped vocabulary.
Every reply is forced to 25 tokens ([SEP] banned), so both sides do the same work. The
baseline re-runs the whole sequence for every token, as interact.py does; it runs under
inference_mode with use_cache=False, which only makes it faster than the original.
Torch keeps its default thread count unless --threads is given. On a 2-core machine shared with
other busy processes, two intra-op threads wait on each other at every operator; compare with
--threads 1 there.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import DynamicCache, GPT2Config

import chatbot.generate.sampling

from chatbot.layout import join_turns
from chatbot.model.modeling import build_model, load_gpt2_config, special_ids
from chatbot.model.precision import prepare_model
from chatbot.generate.sampling import generate_tokens
from chatbot.tokenization import hidden_token_ids, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BASE = {"n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
REPLY_TOKENS = 25
TURN_TOKENS = 15  # a typical chitchat utterance
CHITCHAT = {"temperature": 1.0, "top_k": 8}  # interact.py's defaults (top_p 0 = off)
VARIANTS = ("fp32-dynamic", "fp32", "bf16", "int8")


def load_base_model(tokenizer):
    path = ROOT / "configs" / "base.json"
    if path.is_file():
        config = load_gpt2_config(path, tokenizer)
    else:
        config = GPT2Config(**BASE, vocab_size=len(tokenizer), **special_ids(tokenizer))
    torch.manual_seed(0)
    return build_model(config).eval()


def make_context(tokenizer, turns: int) -> list[int]:
    """`[CLS] t1 [SEP] … [SEP]` with `turns` earlier turns plus the message, random hanzi."""
    rng = torch.Generator().manual_seed(turns)
    first_hanzi = tokenizer.convert_tokens_to_ids("啊")  # GB2312 hanzi occupy ids 7..6769
    ids = torch.randint(first_hanzi, first_hanzi + 6763, ((turns + 1), TURN_TOKENS), generator=rng)
    return join_turns(ids.tolist(), cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)


@contextmanager
def dynamic_cache(variant: str):
    """Run `generate_tokens` with transformers' DynamicCache for the fp32-dynamic variant."""
    if variant != "fp32-dynamic":
        yield
        return
    preallocated = chatbot.generate.sampling.preallocated_cache
    chatbot.generate.sampling.preallocated_cache = lambda n_layer, capacity: DynamicCache()
    try:
        yield
    finally:
        chatbot.generate.sampling.preallocated_cache = preallocated


def cached_steps(model, context, *, banned, eos_id, greedy, seed=0) -> Iterator[list[int]]:
    sampling = {"temperature": 0} if greedy else CHITCHAT
    return generate_tokens(model, context, max_new_tokens=REPLY_TOKENS, min_new_tokens=REPLY_TOKENS,
                           eos_id=eos_id, banned_ids=banned, generator=torch.Generator().manual_seed(seed),
                           **sampling)


def cached_reply(model, context, **kw) -> list[int]:
    return [step[0] for step in cached_steps(model, context, **kw)]


def cached_split_ms(model, context, reps: int, **kw) -> tuple[float, float]:
    """(ms to the first token, which includes the pass over the context; ms per later token), best of reps."""
    first, rest = math.inf, math.inf
    for _ in range(reps):
        start = time.perf_counter()
        steps = cached_steps(model, context, greedy=False, **kw)
        next(steps)
        first_done = time.perf_counter()
        for _ in steps:
            pass
        first = min(first, first_done - start)
        rest = min(rest, (time.perf_counter() - first_done) / (REPLY_TOKENS - 1))
    return 1000 * first, 1000 * rest


@torch.inference_mode()
def chitchat_reply(model, context, *, banned, eos_id, greedy, seed=0) -> list[int]:
    """GPT2-chitchat's interact.py loop: the whole sequence through the model for every token."""
    rng = torch.Generator().manual_seed(seed)
    input_ids = torch.tensor([context])
    reply: list[int] = []
    for _ in range(REPLY_TOKENS):
        logits = model(input_ids=input_ids, use_cache=False).logits[0, -1, :]
        logits[sorted(banned | {eos_id})] = -math.inf  # interact.py bans [UNK]; [SEP] banned to force 25
        if greedy:
            next_id = logits.argmax()
        else:
            logits = logits / CHITCHAT["temperature"]
            kth = torch.topk(logits, CHITCHAT["top_k"]).values[-1]
            logits[logits < kth] = -math.inf
            next_id = torch.multinomial(logits.softmax(-1), 1, generator=rng)[0]
        reply.append(int(next_id))
        input_ids = torch.cat([input_ids, next_id.view(1, 1)], dim=1)
    return reply


def best_ms(fn: Callable[[], object], reps: int) -> float:
    """The fastest of `reps` runs: on a shared machine it is the one other processes disturbed least."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def load_variants(tokenizer, names) -> dict:
    fp32 = load_base_model(tokenizer)
    return {name: fp32 if name.startswith("fp32") else prepare_model(copy.deepcopy(fp32), name) for name in names}


def fp32_model(models: dict):
    """The fp32 model, which the re-run baseline and the greedy check use."""
    return models.get("fp32", models.get("fp32-dynamic"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="timed replies per figure of ours (best reported)")
    parser.add_argument("--baseline-reps", type=int, default=1, help="timed replies per baseline figure")
    parser.add_argument("--max-turns", type=int, default=10, help="the history sweep goes 1..N turns")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="what to time; fp32-dynamic is the reference of the ratios")
    args = parser.parse_args()
    if not {"fp32", "fp32-dynamic"} & set(args.variants):
        parser.error("--variants needs fp32 or fp32-dynamic: the baseline and the greedy check run fp32")
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(ROOT / "vocab" / "vocab.txt")
    models = load_variants(tokenizer, args.variants)
    eos_id = tokenizer.sep_token_id
    kw = {"banned": hidden_token_ids(tokenizer) - {eos_id}, "eos_id": eos_id}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; {sum(p.numel() for p in fp32_model(models).parameters()) / 1e6:.0f}M "
          f"parameters, random weights, {REPLY_TOKENS}-token replies, best of {args.reps} "
          f"(baseline {args.baseline_reps})\n")
    context = make_context(tokenizer, 5)
    reference = check_greedy(models, context, kw)
    baseline_at = reply_table(models, context, kw, args, reference)
    history_sweep(models, tokenizer, kw, args, baseline_at)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def check_greedy(models: dict, context, kw) -> str:
    """Untimed first runs (allocation, kernel choice). The fp32 variants must give the re-run
    loop's greedy tokens exactly; bf16/int8 print how many tokens agree (random weights have
    near-flat logits, so this says little about a trained model: see tests/test_precision.py)."""
    expected = chitchat_reply(fp32_model(models), context, greedy=True, **kw)
    for name, model in models.items():
        with dynamic_cache(name):
            got = cached_reply(model, context, greedy=True, **kw)
        if name.startswith("fp32"):
            assert got == expected, f"{name}: the KV cache changed the greedy reply"
        else:
            print(f"{name}: {sum(a == b for a, b in zip(got, expected))}/{REPLY_TOKENS} greedy tokens as fp32")
    return "fp32-dynamic" if "fp32-dynamic" in models else next(iter(models))


def reply_table(models: dict, context, kw, args, reference: str) -> dict:
    print(f"\n5 turns of history + the message ({len(context)} context tokens); x = the {reference} "
          f"reply time / this one")
    print(f"{'variant':<14}{'mode':<9}{'ms/reply':>10}{'ms/token':>10}{'x':>7}")
    baseline_at, ours = {}, {}
    fp32 = fp32_model(models)
    for mode in ("greedy", "sampled"):
        is_greedy = mode == "greedy"
        for name, model in models.items():
            with dynamic_cache(name):
                ours[name] = best_ms(lambda: cached_reply(model, context, greedy=is_greedy, **kw), args.reps)
        base = best_ms(lambda: chitchat_reply(fp32, context, greedy=is_greedy, **kw), args.baseline_reps)
        for name, ms in [*ours.items(), ("re-run (fp32)", base)]:
            print(f"{name:<14}{mode:<9}{ms:>10.0f}{ms / REPLY_TOKENS:>10.1f}{ours[reference] / ms:>6.2f}x")
    baseline_at[5] = base  # the sampled figure, reused by the sweep below
    return baseline_at


def history_sweep(models: dict, tokenizer, kw, args, baseline_at: dict) -> None:
    """Sampled replies as history grows: ms to the first token (which includes the pass over
    the context), then ms per later token, per variant. The baseline is slow: measured at the
    ends of the sweep only."""
    print("\nas history grows (sampled): first ms / later ms per token, per variant")
    print(f"{'turns':>5}{'context':>9}" + "".join(f"{name:>20}" for name in models) + f"{'re-run ms/token':>17}")
    fp32 = fp32_model(models)
    for turns in range(1, args.max_turns + 1):
        context = make_context(tokenizer, turns)
        cells = []
        for name, model in models.items():
            with dynamic_cache(name):
                first, later = cached_split_ms(model, context, args.reps, **kw)
            cells.append(f"{first:>10.0f} / {later:>6.1f}")
        if turns in (1, args.max_turns):
            baseline_at[turns] = best_ms(lambda: chitchat_reply(fp32, context, greedy=False, **kw),
                                         args.baseline_reps)
        base = f"{baseline_at[turns] / REPLY_TOKENS:.1f}" if turns in baseline_at else "-"
        print(f"{turns:>5}{len(context):>9}" + "".join(f"{c:>20}" for c in cells) + f"{base:>17}", flush=True)


if __name__ == "__main__":
    main()
