"""The clients of bench_serve.py: streamed chat completions through the official OpenAI client.

Every request asks for `REPLY_TOKENS` tokens at temperature 1 after `HISTORY_TURNS` turns of
history (random hanzi from the shipped vocabulary, `TURN_CHARS` a turn). Conversations are seeded
by the load's name and the client's number, so every server gets the same requests; each load has
its own name, so no server sees a prompt twice (vLLM caches prompt prefixes).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

from servers import SERVED_NAME

REPLY_TOKENS = 25
HISTORY_TURNS = 3
TURN_CHARS = 15


@dataclass
class Reply:
    ttft: float | None  # seconds to the first text; None if the reply had none
    seconds: float  # to the whole reply
    tokens: int  # usage.completion_tokens
    prompt_tokens: int | None  # usage.prompt_tokens, where the server reports it


def vocab_hanzi() -> list[str]:
    from chatbot.resources import VOCAB
    from chatbot.tokenization import load_tokenizer

    vocab = load_tokenizer(VOCAB).get_vocab()
    return [t for t in vocab if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]


def conversation(rng: random.Random, hanzi: list[str]) -> list[dict]:
    turns = ["".join(rng.choices(hanzi, k=TURN_CHARS)) for _ in range(HISTORY_TURNS + 1)]
    # Roles alternate backwards from the last turn, the user's message.
    return [{"role": "user" if (len(turns) - i) % 2 else "assistant", "content": t}
            for i, t in enumerate(turns)]


async def one_reply(client, model: str, messages: list[dict], extra: dict) -> Reply:
    """One streamed request; tokens are counted from the usage chunk (stream_options.include_usage)."""
    start = time.perf_counter()
    first, usage = None, None
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=REPLY_TOKENS, temperature=1, stream=True,
        stream_options={"include_usage": True}, extra_body=extra or None)
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        elif first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    if usage is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return Reply(first, seconds, usage.completion_tokens, getattr(usage, "prompt_tokens", None))


async def load(url: str, name: str, *, clients: int, requests: int, time_limit: float, hanzi: list[str],
               extra: dict | None = None) -> dict:
    """`clients` concurrent clients, each sending up to `requests` requests in a row; none starts after
    `time_limit` s and none may take longer. First, untimed, one request per client at once: the
    server's first batch of this size (vLLM compiles for new shapes; allocators grow)."""
    from openai import AsyncOpenAI

    results: list[Reply] = []
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=time_limit, max_retries=0)
    async with client:
        async def client_loop(tag: str, client_id: int, count: int, out: list) -> None:
            rng, deadline = random.Random(f"{tag}/{client_id}"), time.perf_counter() + time_limit
            for _ in range(count):
                if time.perf_counter() > deadline:
                    return
                out.append(await one_reply(client, SERVED_NAME, conversation(rng, hanzi), extra or {}))

        await asyncio.gather(*(client_loop(f"{name}/warm-up", i, 1, []) for i in range(clients)))
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(name, i, requests, results) for i in range(clients)))
        wall = time.perf_counter() - start
    return summarize(results, clients, wall)


def summarize(results: list[Reply], clients: int, wall: float) -> dict:
    tokens = sum(r.tokens for r in results)
    return {"clients": clients, "replies": len(results), "tokens": tokens, "wall": wall,
            "tokens_per_s": tokens / wall,
            "ttft": percentiles([r.ttft for r in results if r.ttft is not None]),
            "latency": percentiles([r.seconds for r in results]),
            "reply_tokens": sorted({r.tokens for r in results}),
            "prompt_tokens": sorted({r.prompt_tokens for r in results if r.prompt_tokens is not None})}


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p95); NaN for no values."""
    if not values:
        return float("nan"), float("nan")
    q = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else [values[0]] * 19
    return statistics.median(values), q[18]
