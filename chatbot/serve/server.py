"""Run `chatbot-serve`: settings from the command's options, the model loaded in the background, uvicorn."""

from __future__ import annotations

import dataclasses
import json
import logging

import h11
import uvicorn
from transformers.utils import logging as hf_logging
from uvicorn.protocols.http.h11_impl import H11Protocol

from chatbot.bot import ChatBot
from chatbot.config import ServeConfig
from chatbot.model.modeling import resolve_model_dir
from chatbot.options import SamplingOptions
from chatbot.serve.app import ServeSettings, create_app
from chatbot.serve.protocol import ApiError

log = logging.getLogger(__name__)


def run_server(cfg: ServeConfig, options: SamplingOptions, api_key: str | None) -> int:
    """Serve until interrupted; a model that fails to load stops the server and raises its error."""
    resolve_model_dir(cfg.model)  # a wrong path or Hub id fails now, not after the server has started
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    settings = ServeSettings(cfg.served_name(), max_batch=cfg.max_batch,
                             max_concurrent=cfg.max_concurrent, max_body_bytes=cfg.max_body_bytes,
                             max_message_chars=cfg.max_message_chars, api_key=api_key,
                             cors_origins=tuple(cfg.cors_origin), allowed_hosts=cfg.allowed_hosts(),
                             read_timeout=cfg.read_timeout)
    log.info("answering requests addressed to %s (--allowed-host adds a name)",
             ", ".join(settings.allowed_hosts))
    failures: list[Exception] = []

    def load_failed(error: Exception) -> None:
        failures.append(error)
        server.should_exit = True

    app = create_app(lambda: ChatBot.from_pretrained(cfg.model, cfg.device, dtype=cfg.dtype,
                                                     max_history=cfg.max_history,
                                                     **dataclasses.asdict(options)),
                     settings, on_load_error=load_failed)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                                           http=deadline_protocol(settings.read_timeout)))
    server.run()
    if failures:  # the command reports a user error (bad folder, bad option) as one line
        raise failures[0]
    return 0


def deadline_protocol(read_timeout: float) -> type[H11Protocol]:
    """The HTTP protocol chatbot-serve runs uvicorn with: `ReadDeadline` with this `read_timeout`."""
    return type("ReadDeadline", (ReadDeadline,), {"read_timeout": read_timeout})


class ReadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), with a deadline on what a client owes and nobody waits for.

    uvicorn has none: its keep-alive timer stops at a client's first byte, so a client that sends a
    request's head a byte at a time (slowloris), or the rest of a body after it was answered, holds
    its connection and a socket forever. Here each has `read_timeout` seconds: for the head, from
    the connection or the previous reply; for the rest of a body, from the reply. Then the connection
    is closed. A body the app is reading has the app's own deadline (`_read_body`, a 408).

    h11 bounds a request head to 16 KiB (uvicorn's `h11_max_incomplete_event_size`).
    """

    read_timeout = 30.0

    def connection_made(self, transport) -> None:
        self._deadline = None
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """Bytes h11 cannot read as HTTP/1.1: 400 in the API's error shape (uvicorn's is plain text)."""
        error = ApiError(400, f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})")
        body = json.dumps(error.body).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        response = h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _watch(self) -> None:
        """Start the deadline while the client owes a head, or a body that was already answered."""
        theirs, ours = self.conn.their_state, self.conn.our_state
        owed = theirs is h11.IDLE or (theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))
        if not owed:
            self._stop_watch()
        elif self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.read_timeout, self._expire)

    def _stop_watch(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self.transport.close()
