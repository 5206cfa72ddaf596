"""Helpers for the server tests: a tiny bot, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import torch
import uvicorn
from transformers import GPT2LMHeadModel

from chatbot.bot import ChatBot
from chatbot.options import SamplingOptions
from chatbot.serve import ServeSettings, create_app
from tests.conftest import tiny_config


class SlowGPT2(GPT2LMHeadModel):
    """A GPT-2 whose every forward pass takes `delay` seconds longer, so that tests can act mid-reply."""

    delay = 0.0

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().forward(*args, **kwargs)


def tiny_bot(tokenizer, *, delay: float = 0.0, n_positions: int = 64, **options) -> ChatBot:
    torch.manual_seed(0)
    model = SlowGPT2(tiny_config(tokenizer, n_positions=n_positions)).eval()
    model.delay = delay
    return ChatBot(model, tokenizer, options=SamplingOptions(**options))


def settings(**changes) -> ServeSettings:
    fields = dict(model_name="tiny", max_batch=4, max_concurrent=8, max_body_bytes=4096, max_message_chars=200)
    return ServeSettings(**{**fields, **changes})


@contextlib.contextmanager
def running_server(app, *, ready: bool = True):
    """Serve `app` on 127.0.0.1 on a free port in a thread; yield its base URL; stop it after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, "the server to start")
        if ready:
            wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, "the model to load")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(bot: ChatBot, **changes):
    """A running server for `bot` with the test settings (see `settings`)."""
    return running_server(create_app(lambda: bot, settings(**changes)))


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.01)
