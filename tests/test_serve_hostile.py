"""chatbot-serve against malformed requests and hostile clients: every one gets a 4xx in the OpenAI
error shape, and nothing reaches the log as a traceback."""

import httpx
import pytest

from chatbot.cli import serve_main
from chatbot.config import ServeConfig
from tests.serving import logged_tracebacks, serve, tiny_bot

JSON = {"Content-Type": "application/json"}
HELLO = '{"messages": [{"role": "user", "content": "你好"}]'


@pytest.fixture(scope="module")
def url(tokenizer):
    with serve(tiny_bot(tokenizer, max_new_tokens=2), max_body_bytes=2**20) as url:
        yield url


def post(url: str, body: str | bytes, headers: dict | None = None) -> httpx.Response:
    headers = JSON if headers is None else headers
    return httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=30)


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
    (b'{"messages": "\xff"}',
     (400, "the request body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 14: "
           "invalid start byte", None)),
])
def test_a_malformed_body_gets_a_400_naming_what_is_wrong_and_logs_no_traceback(url, body, expected):
    with logged_tracebacks() as tracebacks:
        response = post(url, body)
    assert error(response) == expected
    assert tracebacks == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_body_not_declared_json_gets_415(url, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    with logged_tracebacks() as tracebacks:
        response = post(url, HELLO + "}", headers)
    shown = "none" if content_type is None else repr(content_type)
    assert error(response) == (415, "send the request body as JSON with the header `Content-Type: "
                                    f"application/json` (got {shown})", None)
    assert response.json()["error"]["code"] == "unsupported_media_type" and tracebacks == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON"])
def test_json_with_or_without_a_charset_is_answered(url, content_type):
    assert post(url, HELLO + "}", {"Content-Type": content_type}).status_code == 200


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/health"), ("POST", "/v1/chat/completions"),
                                          ("GET", "/nowhere")])
def test_a_request_addressed_to_another_host_gets_400(url, method, path):
    # What a page on evil.example sends once it has pointed evil.example at 127.0.0.1 (DNS rebinding).
    headers = {**JSON, "Host": "evil.example:8000"}
    response = httpx.request(method, url + path, content=HELLO + "}", headers=headers)
    assert error(response) == (400, "this server does not answer to the host 'evil.example:8000'; to serve "
                                    "requests addressed to it, start chatbot-serve with --allowed-host NAME",
                               None)
    assert response.json()["error"]["code"] == "invalid_host"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000"])
def test_the_loopback_names_are_answered(url, host):
    assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_are_the_loopback_names_the_bound_address_and_the_flag_or_any():
    loopback = ("127.0.0.1", "localhost", "[::1]")
    assert ServeConfig().allowed_hosts() == loopback
    assert ServeConfig(host="0.0.0.0").allowed_hosts() == loopback
    assert ServeConfig(host="192.168.1.5").allowed_hosts() == (*loopback, "192.168.1.5")
    assert ServeConfig(host="::", allowed_host=["Chat.Example.com", "[FE80::1]"]).allowed_hosts() == (
        *loopback, "chat.example.com", "[fe80::1]")
    assert ServeConfig(host="fe80::1").allowed_hosts() == (*loopback, "[fe80::1]")
    assert ServeConfig(allowed_host=["example.com", "*"]).allowed_hosts() == ("*",)


@pytest.mark.parametrize("host", ["https://example.com", "example.com:8000", "fe80::1", ""])
def test_cli_refuses_an_allowed_host_with_a_scheme_or_port(host, capsys):
    with pytest.raises(SystemExit) as e:
        serve_main(["--allowed-host", host])
    assert e.value.code == 2 and f"--allowed-host must be a host name or address as it appears in a URL, " \
                                 f"without scheme or port (chat.example.com, 192.168.1.5, [fe80::1]), or * " \
                                 f"for any; got {host!r}" in capsys.readouterr().err


def test_with_allowed_host_star_any_host_is_answered(tokenizer):
    with serve(tiny_bot(tokenizer), allowed_hosts=("*",)) as url:
        assert httpx.get(f"{url}/health", headers={"Host": "evil.example"}).status_code == 200
