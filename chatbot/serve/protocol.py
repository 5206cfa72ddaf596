"""The OpenAI chat-completions protocol as `chatbot-serve` speaks it: request schema, response shapes, errors.

No model and no web framework here: the request is checked into plain values, and replies are
built as the dicts the official clients expect (`chat.completion`, `chat.completion.chunk`,
`{"error": {...}}`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP = 4  # OpenAI's limit on stop strings
# JSON levels a body may nest: a chat request needs 5 (the body, messages, a message, its content
# parts, a part); clients that send assistant messages' tool_calls reach 6.
MAX_DEPTH = 8


class ApiError(Exception):
    """An error reply: HTTP status and the OpenAI error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `name`, which a chitchat model has no use for
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The parameters `chatbot-serve` accepts; any other one is refused by name."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # Sent by some clients at their neutral values; anything else is not supported.
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logprobs: Literal[False] = False

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


_FIELDS = (set(ChatRequest.model_fields) | set(Message.model_fields) | set(_TextPart.model_fields)
           | {"include_usage"})


def decode_body(body: bytes) -> object:
    """The request body's JSON value.

    Raises:
        ApiError: 400 for a body that is not JSON, nests deeper than `MAX_DEPTH` levels, or holds an
            integer too long for Python to read.
    """
    too_deep = ApiError(400, f"the request body nests arrays and objects more than {MAX_DEPTH} levels deep; "
                             "a chat request needs 5")
    try:
        data = json.loads(body, parse_int=_parse_int)
    except RecursionError:  # json's C decoder stops at Python's recursion limit and unwinds cleanly
        raise too_deep from None
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if _nests_deeper(data, MAX_DEPTH):  # deep but under the recursion limit: refused the same
        raise too_deep
    return data


def _parse_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # over Python's int-string conversion limit (4300 digits)
        raise ApiError(400, f"the request body holds an integer of {len(digits.lstrip('-'))} digits; no "
                            "parameter takes more than 19 (seed < 2**63)") from None


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether `value` nests lists and dicts more than `limit` levels deep, looked at level by level
    (recursion is what a deep value would exhaust)."""
    level = [value]
    for _ in range(limit + 1):  # pass k finds the lists and dicts k levels deep
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            return False
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return True


def parse_request(data: object, *, max_message_chars: int) -> ChatRequest:
    """Check a decoded JSON body.

    Raises:
        ApiError: 400 naming the first bad parameter (`temperature`, `messages[2].content`, ...).
    """
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        extra = error["type"] == "extra_forbidden"
        param = _param_name(error["loc"], known=_FIELDS | {error["loc"][-1]} if extra else _FIELDS)
        if extra:
            raise ApiError(400, f"unsupported parameter: {param}", param=param) from None
        raise ApiError(400, f"{param}: {error['msg']} (got {error.get('input')!r:.80})",
                       param=param) from None
    stops = request.stop_strings
    if len(stops) > MAX_STOP or "" in stops:
        raise ApiError(400, f"stop: give at most {MAX_STOP} non-empty strings, got {stops!r:.200}",
                       param="stop")
    for i, message in enumerate(request.messages):
        if len(message.text) > max_message_chars:
            raise ApiError(400, f"messages[{i}].content has {len(message.text)} characters; the limit is "
                           f"{max_message_chars} (--max-message-chars)", param=f"messages[{i}].content",
                           code="message_too_long")
    return request


def _param_name(loc: tuple, known: set[str]) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content': the `known` names, union
    branches dropped."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part in known:
            name += f".{part}" if name else part
        else:
            break
    return name or "body"


def split_messages(request: ChatRequest) -> tuple[str, list[str]]:
    """(the message to answer, the turns before it), from the conversation in `messages`.

    System and developer messages are ignored: the model was trained on chitchat turns only, and
    many clients always send one. The conversation must end with a user message.

    Raises:
        ApiError: 400 when the last message is not the user's.
    """
    turns = [m for m in request.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "messages must end with a user message (system messages are ignored)",
                       param="messages")
    return turns[-1].text, [m.text for m in turns[:-1]]


class ReplyHead:
    """What every chunk of one reply shares: its id, creation time and model name."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return self._object("chat.completion.chunk", [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._object("chat.completion.chunk", []), "usage": usage}

    def completion(self, texts: list[str], finish_reasons: list[str], usage: dict) -> dict:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": reason} for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
        return {**self._object("chat.completion", choices), "usage": usage}

    def _object(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
