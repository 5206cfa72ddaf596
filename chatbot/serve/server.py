"""Run `chatbot-serve`: settings from the command's options, the model loaded in the background, uvicorn."""

from __future__ import annotations

import dataclasses
import logging

import uvicorn
from transformers.utils import logging as hf_logging

from chatbot.bot import ChatBot
from chatbot.config import ServeConfig
from chatbot.model.modeling import resolve_model_dir
from chatbot.options import SamplingOptions
from chatbot.serve.app import ServeSettings, create_app


def run_server(cfg: ServeConfig, options: SamplingOptions, api_key: str | None) -> int:
    """Serve until interrupted; a model that fails to load stops the server and raises its error."""
    resolve_model_dir(cfg.model)  # a wrong path or Hub id fails now, not after the server has started
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    settings = ServeSettings(cfg.served_model_name or cfg.model, max_batch=cfg.max_batch,
                             max_concurrent=cfg.max_concurrent, max_body_bytes=cfg.max_body_bytes,
                             max_message_chars=cfg.max_message_chars, api_key=api_key,
                             cors_origins=tuple(cfg.cors_origin), allowed_hosts=cfg.allowed_hosts())
    logging.getLogger(__name__).info("answering requests addressed to %s (--allowed-host adds a name)",
                                     ", ".join(settings.allowed_hosts))
    failures: list[Exception] = []

    def load_failed(error: Exception) -> None:
        failures.append(error)
        server.should_exit = True

    app = create_app(lambda: ChatBot.from_pretrained(cfg.model, cfg.device, dtype=cfg.dtype,
                                                     max_history=cfg.max_history,
                                                     **dataclasses.asdict(options)),
                     settings, on_load_error=load_failed)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info"))
    server.run()
    if failures:  # the command reports a user error (bad folder, bad option) as one line
        raise failures[0]
    return 0
