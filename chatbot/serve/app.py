"""`chatbot-serve`'s web app: OpenAI-compatible chat completions, batched across users, and a chat page.

    settings = ServeSettings("final", max_batch=16, max_concurrent=64, max_body_bytes=2**20,
                             max_message_chars=8000)
    app = create_app(lambda: ChatBot.from_pretrained("model/final"), settings)

The model loads in a background thread once the server starts (`/health` says 503 until then);
one `Engine` decodes every request together. Nothing here reads or writes a file a request names:
the only file served is the packaged chat page.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from chatbot.bot import ChatBot
from chatbot.config import LOOPBACK_HOSTS
from chatbot.generate.detokenize import ReplyText
from chatbot.serve.engine import Engine, Job, QueueFull
from chatbot.serve.protocol import (
    ApiError,
    ChatRequest,
    ReplyHead,
    decode_body,
    parse_request,
    split_messages,
    usage,
)

log = logging.getLogger(__name__)

PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                           "style-src 'unsafe-inline'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class ServeSettings:
    """The server's knobs; `chatbot-serve`'s flags hold their defaults."""

    model_name: str  # the id /v1/models reports and requests may name
    max_batch: int  # replies (choices) decoded together
    max_concurrent: int  # requests held at once, decoding or queued; more get 429
    max_body_bytes: int  # larger request bodies get 413
    max_message_chars: int  # longer messages get 400
    api_key: str | None = None  # required as `Authorization: Bearer KEY` on /v1/* when set
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (none: CORS off)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names answered, without port ("*": any)
    read_timeout: float = 30.0  # seconds a client has to send a request's body; slower ones get 408


class _State:
    """What the routes share: the bot and engine once loaded, or the loading error."""

    def __init__(self):
        self.bot: ChatBot | None = None
        self.engine: Engine | None = None
        self.error: Exception | None = None
        self.loaded_at = 0

    def ready(self) -> tuple[ChatBot, Engine]:
        """The bot and engine, or 503 while the model is still loading."""
        if self.engine is None:
            raise ApiError(503, "the model is still loading; retry shortly (GET /health says when it is "
                           "ready)", type="server_error", code="model_loading")
        return self.bot, self.engine


def create_app(load_bot: Callable[[], ChatBot], settings: ServeSettings,
               on_load_error: Callable[[Exception], None] | None = None) -> FastAPI:
    """The web app; `load_bot` runs in a background thread at start-up, `on_load_error` if it raises."""
    state = _State()

    def load() -> None:
        try:
            bot = load_bot()
            engine = Engine(bot.batch_decoder(), max_batch=settings.max_batch,
                            max_pending=settings.max_concurrent)
            # The engine is what marks the server ready (`_State.ready`), so it is set last.
            state.bot, state.loaded_at = bot, int(time.time())
            state.engine = engine
            log.info("model %s loaded; serving", settings.model_name)
        except Exception as e:  # noqa: BLE001 - reported by /health and on_load_error
            state.error = e
            if on_load_error:
                on_load_error(e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load, name="chatbot-load", daemon=True).start()
        yield
        if state.engine:
            state.engine.close()

    app = FastAPI(title="chatbot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    if "*" not in settings.allowed_hosts:  # added last, so it runs first
        app.add_middleware(_HostCheck, allowed=settings.allowed_hosts)
    _add_error_handlers(app)
    _add_routes(app, state, settings)
    return app


class _HostCheck:
    """Answers 400 to a request whose Host header names a host not in `allowed`.

    A page on another site can point its own name at 127.0.0.1 (DNS rebinding): the browser then
    sends it our replies as same-origin. Its requests still carry its name in Host, so they stop here.
    """

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if _host_name(host) not in self.allowed:
                error = ApiError(400, f"this server does not answer to the host {host!r}; to serve requests "
                                      "addressed to it, start chatbot-serve with --allowed-host NAME",
                                 code="invalid_host")
                await JSONResponse(error.body, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name in a Host header, lowercase and without port: 'Example.com:8000' -> 'example.com',
    '[::1]:8000' -> '[::1]'."""
    host = host.lower()
    if host.startswith("[") and "]" in host:
        return host[:host.index("]") + 1]
    return host.partition(":")[0]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
        if e.status in (408, 413):  # the rest of the body may still be coming: stop it with the connection
            headers["Connection"] = "close"
        return JSONResponse(e.body, status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return await api_error(request, ApiError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return await api_error(request, ApiError(500, "internal server error", type="server_error"))


def _add_routes(app: FastAPI, state: _State, settings: ServeSettings) -> None:
    """The chat page and /health (open to all), then the API under /v1 (behind `settings.api_key`)."""
    _add_page_routes(app, state, settings)
    _add_model_routes(app, state, settings)
    _add_chat_route(app, state, settings)


def _add_page_routes(app: FastAPI, state: _State, settings: ServeSettings) -> None:
    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("chatbot.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @app.get("/favicon.svg")
    @app.get("/favicon.ico")  # browsers and bookmark tools ask for it whatever the page links
    async def favicon() -> Response:
        icon = resources.files("chatbot.serve").joinpath("static/favicon.svg").read_bytes()
        return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        # Open to all, for load balancers: what else it says (the load error, which may name paths;
        # the request counts) only to those who hold the key.
        insider = _has_key(request, settings.api_key)
        if state.error is not None:
            return JSONResponse({"status": "error", **({"error": str(state.error)} if insider else {})},
                                status_code=500)
        if state.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": settings.model_name,
                             **(state.engine.stats() if insider else {})})


def _add_model_routes(app: FastAPI, state: _State, settings: ServeSettings) -> None:
    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": state.loaded_at,
                "owned_by": "chatbot"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _authorize(request, settings.api_key)
        state.ready()
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict:
        _authorize(request, settings.api_key)
        state.ready()
        _check_model(model_id, settings.model_name)
        return model_card()


def _add_chat_route(app: FastAPI, state: _State, settings: ServeSettings) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _authorize(request, settings.api_key)
        _check_json_type(request)
        body = await _read_body(request, settings.max_body_bytes, settings.read_timeout)
        chat = parse_request(decode_body(body), max_message_chars=settings.max_message_chars)
        bot, engine = state.ready()
        job = _make_job(bot, chat, settings)
        try:
            engine.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"{e}; retry shortly", type="rate_limit_error", code="queue_full") from None
        reply = _Reply(bot, job, chat.stop_strings, engine)
        head = ReplyHead(settings.model_name)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(_sse(reply, head, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(request, reply, head)


def _has_key(request: Request, api_key: str | None) -> bool:
    """Whether no key is set or the request's bearer token matches it (compared in constant time)."""
    if api_key is None:
        return True
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), api_key.encode())


def _authorize(request: Request, api_key: str | None) -> None:
    """Nothing if `_has_key`, else 401."""
    if not _has_key(request, api_key):
        raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                       code="invalid_api_key")


def _check_json_type(request: Request) -> None:
    """415 unless the body is declared JSON: a page on another site can post text/plain or a form
    here without the browser asking first (CORS preflight), but not application/json."""
    given = request.headers.get("content-type")
    if (given or "").partition(";")[0].strip().lower() != "application/json":
        shown = "none" if given is None else repr(given)
        raise ApiError(415, "send the request body as JSON with the header `Content-Type: application/json` "
                            f"(got {shown})", code="unsupported_media_type")


def _check_model(model_id: str, served: str) -> None:
    """404 unless `model_id` names the one model this server has."""
    if model_id != served:
        raise ApiError(404, f"model {model_id!r} does not exist; this server has {served!r}",
                       param="model", code="model_not_found")


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, read at most `limit` bytes far (413 beyond) and for `timeout` seconds (408 after)."""
    too_big = ApiError(413, f"the request body exceeds {limit} bytes (--max-body-bytes)",
                       code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()

    async def read() -> None:
        async for piece in request.stream():
            body.extend(piece)
            if len(body) > limit:
                raise too_big

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s (--read-timeout)",
                       code="request_timeout") from None
    except ClientDisconnect:  # nobody to answer; an ApiError keeps it out of the log as a bug
        raise ApiError(400, "the client hung up before sending the whole body") from None
    return bytes(body)


def _make_job(bot: ChatBot, chat: ChatRequest, settings: ServeSettings) -> Job:
    if chat.model is not None:
        _check_model(chat.model, settings.model_name)
    if chat.n > settings.max_batch:
        raise ApiError(400, f"n must be <= {settings.max_batch} (--max-batch), got {chat.n}", param="n")
    text, history = split_messages(chat)
    changes = {k: v for k, v in (("temperature", chat.temperature), ("top_p", chat.top_p)) if v is not None}
    max_tokens = chat.max_completion_tokens or chat.max_tokens
    if max_tokens is not None:
        changes.update(max_new_tokens=max_tokens, min_new_tokens=min(bot.options.min_new_tokens, max_tokens))
    try:
        options = bot.resolve_options(num_candidates=1, **changes)
    except ValueError as e:
        message = str(e).replace("max_new_tokens (--max-len)", "max_tokens")
        raise ApiError(400, message, param="max_tokens") from None
    prompt = bot.prompt(text, history, max_new_tokens=options.max_new_tokens)
    # Choice i samples with seed + i, so choice 0 is what the same request with n=1 gets.
    base = secrets.randbits(62) if chat.seed is None else chat.seed
    seeds = [(base + i) % 2**63 for i in range(chat.n)]
    return Job(prompt, options, seeds, asyncio.get_running_loop())


class _Reply:
    """A job's choices as they arrive: each one's text (a `ReplyText`, which applies the stop
    strings), token counts, and the decoder's rows of choices a stop string ended."""

    def __init__(self, bot: ChatBot, job: Job, stops: list[str], engine: Engine):
        self.job, self.engine = job, engine
        eos_id = bot.tokenizer.sep_token_id
        self.texts = [ReplyText(bot.text_stream(), eos_id=eos_id, stops=stops) for _ in job.seeds]
        self.tokens = [0] * len(job.seeds)

    @property
    def finish_reasons(self) -> list[str | None]:
        """Each choice's finish reason, None while it goes on."""
        return [text.finish_reason for text in self.texts]

    def usage(self) -> dict:
        return usage(len(self.job.prompt.input_ids), sum(self.tokens))

    async def pieces(self) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice, new text, finish reason or None) as tokens arrive, until every choice is done."""
        while None in self.finish_reasons:
            event = await self.job.events.get()
            if isinstance(event, Exception):
                raise ApiError(500, f"generation failed: {event}", type="server_error")
            for choice, token_id, finished in event:
                if self.texts[choice].finish_reason is None:
                    yield choice, *self._advance(choice, token_id, finished)

    def _advance(self, choice: int, token_id: int, finished: bool) -> tuple[str, str | None]:
        self.tokens[choice] += 1
        text = self.texts[choice]
        piece = text.add(token_id, last=finished)
        if text.finish_reason is not None and not finished:  # a stop string: the decoder would go on
            self.engine.cancel(self.job, [choice])
        return piece, text.finish_reason


async def _complete(request: Request, reply: _Reply, head: ReplyHead) -> JSONResponse:
    """The whole reply as one `chat.completion`; a client that hangs up first cancels it."""
    texts = [""] * len(reply.texts)

    async def collect() -> None:
        async for choice, piece, _ in reply.pieces():
            texts[choice] += piece

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.create_task(collect()), asyncio.create_task(hang_up())
    await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if not work.done():  # the client hung up: nobody will read the reply
        work.cancel()
        reply.engine.cancel(reply.job)
        return Response(status_code=499)
    work.result()  # raises the generation error, if any
    return JSONResponse(head.completion(texts, reply.finish_reasons, reply.usage()))


async def _sse(reply: _Reply, head: ReplyHead, include_usage: bool) -> AsyncIterator[str]:
    """The reply as server-sent events: a role chunk per choice, content chunks, finish chunks, [DONE]."""
    try:
        for choice in range(len(reply.texts)):
            yield _event(head.chunk(choice, {"role": "assistant", "content": ""}))
        async for choice, piece, reason in reply.pieces():
            if piece:
                yield _event(head.chunk(choice, {"content": piece}))
            if reason:
                yield _event(head.chunk(choice, {}, reason))
        if include_usage:
            yield _event(head.usage_chunk(reply.usage()))
    except ApiError as e:
        yield _event(e.body)
    finally:
        # A client that hung up lands here too (Starlette cancels the stream): free its rows now.
        reply.engine.cancel(reply.job)
    yield "data: [DONE]\n\n"


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
