"""Helpers for the server tests: a tiny bot, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import httpx
import torch
import uvicorn
from transformers import GPT2LMHeadModel

from chatbot.bot import ChatBot
from chatbot.options import SamplingOptions
from chatbot.serve.app import ServeSettings, create_app
from chatbot.serve.server import deadline_protocol
from tests.conftest import tiny_config


def tiny_bot(tokenizer, *, delay: float = 0.0, n_positions: int = 64, **options) -> ChatBot:
    """A bot on a random 2-layer GPT-2; `delay` seconds are added to every forward pass, so that
    tests can act in the middle of a reply."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config(tokenizer, n_positions=n_positions)).eval()
    if delay:
        # The LM head runs once in every forward pass, prompt or decode step (which skips model.forward).
        model.lm_head.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    return ChatBot(model, tokenizer, options=SamplingOptions(**options))


def settings(**changes) -> ServeSettings:
    fields = dict(model_name="tiny", max_batch=4, max_concurrent=8, max_body_bytes=4096, max_message_chars=200)
    return ServeSettings(**{**fields, **changes})


@contextlib.contextmanager
def running_server(app, *, ready: bool = True, read_timeout: float = 30.0):
    """Serve `app` on 127.0.0.1 on a free port in a thread, with chatbot-serve's HTTP protocol;
    yield its base URL; stop it after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1,
                                           http=deadline_protocol(read_timeout)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, "the server to start")
        if ready:
            wait_for(lambda: _loaded(url), "the model to load")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _loaded(url: str) -> bool:
    health = httpx.get(f"{url}/health")
    if health.status_code == 500:
        raise RuntimeError(f"the model failed to load: {health.json()['error']}")
    return health.status_code == 200


def serve(bot: ChatBot, **changes):
    """A running server for `bot` with the test settings (see `settings`)."""
    serve_settings = settings(**changes)
    return running_server(create_app(lambda: bot, serve_settings), read_timeout=serve_settings.read_timeout)


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def logged_tracebacks():
    """Collect the records logged with a traceback meanwhile, by the app (through the root logger)
    or by uvicorn (whose logger does not propagate). Enter it after starting servers: uvicorn's
    logging set-up drops the handlers of its loggers."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record) if record.exc_info else None
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
