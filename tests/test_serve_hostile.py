"""chatbot-serve against malformed requests and hostile clients: every one gets a 4xx in the OpenAI
error shape, and nothing reaches the log as a traceback."""

import json
import socket
import time

import httpx
import pytest

from chatbot.cli import serve_main
from chatbot.config import ServeConfig
from chatbot.serve.app import create_app
from tests.serving import logged_tracebacks, running_server, serve, settings, tiny_bot, wait_for

JSON = {"Content-Type": "application/json"}
KEY = "test-key"
POST_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
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


@pytest.fixture(scope="module")
def impatient(tokenizer):
    """A server with a key that gives clients 1 s to send a request's head, and again its body."""
    with serve(tiny_bot(tokenizer, max_new_tokens=2), api_key=KEY, read_timeout=1.0) as url:
        yield url


def connect(url: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout after 10 s of silence)."""
    received = b""
    while piece := sock.recv(65536):
        received += piece
    return received


def trickle(url: str, socks: list[socket.socket], byte: bytes) -> tuple[int, dict[socket.socket, bytes]]:
    """Send `byte` on each socket every 0.2 s, as a client whose request never ends, until the server
    has closed them all or 20 s have passed, checking meanwhile that it answers others.

    Returns:
        (how many are still open, what each received).
    """
    received = {sock: b"" for sock in socks}
    still_open, deadline = set(socks), time.monotonic() + 20
    for sock in socks:
        sock.setblocking(False)
    while still_open and time.monotonic() < deadline:
        assert httpx.get(f"{url}/health").status_code == 200
        for sock in list(still_open):
            try:
                sock.send(byte)
                piece = sock.recv(65536)
                received[sock] += piece
                if piece == b"":
                    still_open.discard(sock)
            except BlockingIOError:  # nothing to read yet: still open
                pass
            except OSError:  # reset: closed
                still_open.discard(sock)
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    return len(still_open), received


def test_fifty_slow_heads_are_cut_off_and_the_server_goes_on_answering(impatient):
    socks = [connect(impatient) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    still_open, received = trickle(impatient, socks, b"X")  # a header line that never ends (slowloris)
    assert still_open == 0 and set(received.values()) == {b""}


def test_a_body_that_stops_coming_gets_408_and_the_connection_closes(impatient):
    with connect(impatient) as sock:
        sock.sendall(POST_HEAD + b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n"
                     b"{\"messages\"")
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"] == {
        "message": "the request body did not arrive within 1 s (--read-timeout)",
        "type": "invalid_request_error", "param": None, "code": "request_timeout"}


def test_a_body_still_trickling_in_after_the_reply_is_cut_off(impatient):
    sock = connect(impatient)  # no key: answered 401 at once, while the body goes on a byte at a time
    sock.sendall(POST_HEAD + b"Content-Length: 1000\r\n\r\n{\"messages\"")
    still_open, received = trickle(impatient, [sock], b" ")
    assert still_open == 0 and received[sock].startswith(b"HTTP/1.1 401 ")


def test_bytes_that_are_not_http_get_400_in_the_api_error_shape(impatient):
    with connect(impatient) as sock:
        sock.sendall(b"HELLO\r\n\r\n")
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"] == {
        "message": "the request is not valid HTTP/1.1 (Invalid HTTP request received)",
        "type": "invalid_request_error", "param": None, "code": None}


def test_health_without_the_key_says_only_the_status_and_the_served_name(impatient):
    assert httpx.get(f"{impatient}/health").json() == {"status": "ok", "model": "tiny"}
    full = httpx.get(f"{impatient}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert full == {"status": "ok", "model": "tiny", "running": 0, "waiting": 0, "finished": full["finished"]}


def test_the_served_name_of_an_absolute_model_path_is_its_last_folder():
    assert ServeConfig(model="/srv/models/final").served_name() == "final"
    assert ServeConfig(model="model/final").served_name() == "model/final"
    assert ServeConfig(model="thu-coai/CDial-GPT_LCCC-base").served_name() == "thu-coai/CDial-GPT_LCCC-base"
    assert ServeConfig(model="/srv/models/final", served_model_name="chitchat").served_name() == "chitchat"


def test_a_load_error_is_told_only_to_key_holders(tmp_path):
    def load():
        raise FileNotFoundError(f"model folder not found: {tmp_path}/secret")

    with running_server(create_app(load, settings(api_key=KEY)), ready=False) as url:
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 500, "the load to fail")
        assert httpx.get(f"{url}/health").json() == {"status": "error"}
        told = httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert told == {"status": "error", "error": f"model folder not found: {tmp_path}/secret"}


@pytest.mark.parametrize("seconds", ["0", "-1", "inf", "nan"])
def test_cli_refuses_a_read_timeout_that_is_not_a_positive_number(seconds, capsys):
    with pytest.raises(SystemExit) as e:
        serve_main(["--read-timeout", seconds])
    assert e.value.code == 2 and "--read-timeout must be > 0 seconds and finite" in capsys.readouterr().err
