"""chatbot-serve against malformed requests and hostile clients: every one gets a 4xx in the OpenAI
error shape, and nothing reaches the log as a traceback."""

import json

import httpx
import pytest

from tests.serving import logged_tracebacks, serve, tiny_bot

JSON = {"Content-Type": "application/json"}
HELLO = '{"messages": [{"role": "user", "content": "你好"}]'


@pytest.fixture(scope="module")
def url(tokenizer):
    with serve(tiny_bot(tokenizer, max_new_tokens=2), max_body_bytes=2**20) as url:
        yield url


def post(url: str, body: str | bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", content=body, headers=JSON if headers is None else headers,
                      timeout=30)


def error(response: httpx.Response) -> tuple[int, str, str | None]:
    """(status, message, param) of an error reply, checking that it has the OpenAI shape."""
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    return response.status_code, body["message"], body["param"]


DEEP = "the request body nests arrays and objects more than 8 levels deep; a chat request needs 5"


@pytest.mark.parametrize("body, expected", [
    ('{"messages": ' + "[" * 200_000 + "]" * 200_000 + "}", (400, DEEP, None)),
    ("[" * 200_000, (400, DEEP, None)),  # unclosed: json gives up at its recursion limit first
    (HELLO + ', "stop": ' + "[" * 9 + "]" * 9 + "}", (400, DEEP, None)),
    (HELLO + ', "seed": ' + "1" * 5000 + "}",
     (400, "the request body holds an integer of 5000 digits; no parameter takes more than 19 (seed < 2**63)",
      None)),
    (HELLO + ', "seed": -' + "9" * 4301 + "}",
     (400, "the request body holds an integer of 4301 digits; no parameter takes more than 19 (seed < 2**63)",
      None)),
    (HELLO + ', "seed": 18446744073709551616}',
     (400, "seed: Input should be less than 9223372036854775808 (got 18446744073709551616)", "seed")),
    (b'{"messages": "\xff"}', (400, "the request body is not valid JSON: 'utf-8' codec can't decode byte 0xff "
                                    "in position 14: invalid start byte", None)),
])
def test_a_malformed_body_gets_a_400_naming_what_is_wrong_and_logs_no_traceback(url, body, expected):
    with logged_tracebacks() as tracebacks:
        response = post(url, body)
    assert error(response) == expected
    assert tracebacks == []
