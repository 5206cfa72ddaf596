"""chatbot-serve under concurrent streaming clients, against a naive one-`ChatBot.reply`-per-request server.

    PYTHONPATH=. python bench/bench_serve.py                       # base model: a few minutes on 2 cores
    PYTHONPATH=. python bench/bench_serve.py --config configs/tiny.json --clients 1 4   # a quick look

Both servers run as separate processes on 127.0.0.1, serving the same model folder:
`configs/base.json` (12 x 768) with random weights and the shipped vocabulary. Every reply is
forced to 25 tokens (`--min-len 25 --max-len 25`) after 3 turns of history (random hanzi, 15 a
turn; `--max-history 4` so the model sees them all). For 1, 4 and 16 concurrent clients, each
client streams its requests one after another (a bounded number, under a time limit) and the
benchmark records generated tokens per second over the whole load, and the p50/p95 time to the
first token and to the whole reply. The naive server is what a Flask/FastAPI wrapper around
`ChatBot` does (GPT2-chitchat's PR #104): every request runs its own `bot.stream(...)` in a worker
thread, concurrently, at batch 1.

On a small machine the load generator shares the cores with the server; `bench_batching.py` times
the batched decoder alone and gives the most any server could gain there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
REPLY_TOKENS = 25
HISTORY_TURNS = 3
TURN_CHARS = 15


def make_model(config: Path, folder: Path) -> Path:
    """A model folder with random weights for `config` and the shipped vocabulary."""
    import torch

    from chatbot.model.modeling import build_model, load_gpt2_config, save_model
    from chatbot.tokenization import load_tokenizer

    tokenizer = load_tokenizer(ROOT / "vocab" / "vocab.txt")
    torch.manual_seed(0)
    model = build_model(load_gpt2_config(config, tokenizer)).eval()
    return save_model(folder, model, tokenizer, {})


def naive_app(model_dir: str):
    """One ChatBot; each request streams its own reply from a worker thread (FastAPI's thread pool)."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from chatbot.bot import ChatBot

    bot = ChatBot.from_pretrained(model_dir, "cpu", max_history=HISTORY_TURNS + 1,
                                  min_new_tokens=REPLY_TOKENS, max_new_tokens=REPLY_TOKENS)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def complete(body: dict) -> StreamingResponse:
        texts = [m["content"] for m in body["messages"]]

        def events():
            for piece in bot.stream(texts[-1], texts[:-1]):  # a sync generator: run in the thread pool
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
            usage = {"completion_tokens": REPLY_TOKENS}  # forced length
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, model_dir: Path, port: int, max_batch: int) -> subprocess.Popen:
    if kind == "batched":
        code = "from chatbot.cli import serve_main; raise SystemExit(serve_main())"
        args = ["--model", str(model_dir), "--port", str(port), "--device", "cpu", "--min-len", str(REPLY_TOKENS),
                "--max-len", str(REPLY_TOKENS), "--max-history", str(HISTORY_TURNS + 1),
                "--max-batch", str(max_batch), "--max-concurrent", "256"]
    else:
        code = ("import sys, uvicorn; sys.path.insert(0, 'bench'); from bench_serve import naive_app; "
                "uvicorn.run(naive_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')")
        args = [str(model_dir), str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready after {timeout} s")


def conversation(rng: random.Random, hanzi: list[str]) -> list[dict]:
    turns = ["".join(rng.choices(hanzi, k=TURN_CHARS)) for _ in range(HISTORY_TURNS + 1)]
    # Roles alternate backwards from the last turn, the user's message.
    return [{"role": "user" if (len(turns) - i) % 2 else "assistant", "content": t} for i, t in enumerate(turns)]


async def one_reply(client: httpx.AsyncClient, url: str, messages: list[dict]) -> tuple[float, float, int]:
    """(seconds to the first text, seconds to the whole reply, generated tokens) of one streamed request."""
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif first is None and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    return first, time.perf_counter() - start, tokens


async def load(url: str, clients: int, requests: int, time_limit: float, hanzi: list[str]) -> dict:
    """`clients` concurrent clients, each sending up to `requests` requests in a row within `time_limit`."""
    results: list[tuple[float, float, int]] = []
    deadline = time.perf_counter() + time_limit

    async def client_loop(client_id: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(client_id)
        for _ in range(requests):
            if time.perf_counter() > deadline:
                return
            results.append(await one_reply(client, url, conversation(rng, hanzi)))

    async with httpx.AsyncClient(timeout=time_limit, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await one_reply(client, url, conversation(random.Random(-1), hanzi))  # warm-up, not counted
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - start
    ttft, latency, tokens = zip(*results)
    return {"clients": clients, "replies": len(results), "tokens_per_s": sum(tokens) / wall,
            "ttft": percentiles(ttft), "latency": percentiles(latency), "tokens": sum(tokens), "wall": wall}


def percentiles(values) -> tuple[float, float]:
    q = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else [values[0]] * 19
    return statistics.median(values), q[18]


def report(rows: dict[str, list[dict]]) -> None:
    print(f"\n| server | clients | replies | tokens/s | × 1 client | TTFT p50 / p95 (s) | reply p50 / p95 (s) "
          "| p50 reply × 1 client |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, results in rows.items():
        single = results[0]
        for r in results:
            print(f"| {kind} | {r['clients']} | {r['replies']} | {r['tokens_per_s']:.1f} "
                  f"| {r['tokens_per_s'] / single['tokens_per_s']:.2f} | {r['ttft'][0]:.2f} / {r['ttft'][1]:.2f} "
                  f"| {r['latency'][0]:.2f} / {r['latency'][1]:.2f} | {r['latency'][0] / single['latency'][0]:.2f} |")
    if "batched" in rows and "naive" in rows:
        for b, n in zip(rows["batched"], rows["naive"]):
            print(f"{b['clients']} clients: batched/naive tokens/s {b['tokens_per_s'] / n['tokens_per_s']:.2f}, "
                  f"p50 reply latency naive/batched {n['latency'][0] / b['latency'][0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "base.json", help="GPT2Config JSON")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per run")
    p.add_argument("--replies", type=int, default=32, help="replies per run at most (split among the clients; "
                   "at least 2 per client)")
    p.add_argument("--time-limit", type=float, default=240, help="seconds per run at most")
    p.add_argument("--servers", nargs="+", default=["batched", "naive"], choices=["batched", "naive"])
    args = p.parse_args(argv)

    from chatbot.tokenization import load_tokenizer

    vocab = load_tokenizer(ROOT / "vocab" / "vocab.txt").get_vocab()
    hanzi = [t for t in vocab if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    print(f"load average at start: {os.getloadavg()}; config {args.config}; {REPLY_TOKENS} tokens a reply "
          f"after {HISTORY_TURNS} turns of history")
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(args.config, Path(tmp) / "model")
        for kind in args.servers:
            port = free_port()
            server = start_server(kind, model_dir, port, max(args.clients))
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, server)
                rows[kind] = []
                for clients in args.clients:
                    per_client = max(2, args.replies // clients)
                    result = asyncio.run(load(url, clients, per_client, args.time_limit, hanzi))
                    rows[kind].append(result)
                    print(f"{kind}, {clients} clients: {result['replies']} replies, {result['tokens']} tokens in "
                          f"{result['wall']:.1f} s", flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)
    report(rows)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
