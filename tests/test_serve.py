"""chatbot-serve end to end: the official openai client against a real server on loopback."""

import json
import threading

import httpx
import openai
import pytest

from chatbot.cli import serve_main
from chatbot.config import ServeConfig
from chatbot.serve.app import create_app
from tests.serving import running_server, serve, settings, tiny_bot, wait_for

KEY = "test-key"
HISTORY = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "你好"},
           {"role": "assistant", "content": "你好吗"}]


@pytest.fixture(scope="module")
def bot(tokenizer):
    return tiny_bot(tokenizer, max_new_tokens=8)


@pytest.fixture(scope="module")
def url(bot):
    with serve(bot, api_key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def slow(tokenizer):
    """A server whose replies always run to max_tokens, 20 ms a step: 2 requests at most, 2 rows."""
    bot = tiny_bot(tokenizer, delay=0.02, n_positions=128, max_new_tokens=100, min_new_tokens=100)
    with serve(bot, max_batch=2, max_concurrent=2) as url:
        yield url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def ask(client, text="今天天气", **options):
    return client.chat.completions.create(model="tiny", messages=[*HISTORY, {"role": "user", "content": text}],
                                          **options)


def test_reply_is_chatbots_reply_to_the_same_history_and_seed(client, bot):
    reply = ask(client, seed=3, temperature=0.8)
    expected = bot.reply("今天天气", ["你好", "你好吗"], seed=3, temperature=0.8)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == "tiny"
    # [CLS] 你好 [SEP] 你好吗 [SEP] 今天天气 [SEP] = 13 prompt tokens; the system message is ignored.
    assert reply.usage.prompt_tokens == 13
    assert reply.usage.total_tokens == 13 + reply.usage.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_stream_has_the_openai_chunk_shapes_and_the_same_text(client):
    chunks = list(ask(client, seed=4, stream=True, stream_options={"include_usage": True}))
    whole = ask(client, seed=4)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_raw_stream_ends_with_done(url):
    body = {"messages": [{"role": "user", "content": "你好"}], "stream": True, "max_tokens": 1}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    finish = json.loads(events[-2].removeprefix("data: "))["choices"][0]
    assert finish == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


def test_choice_i_is_the_reply_with_seed_plus_i(client):
    both = ask(client, seed=5, n=2, temperature=1.0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].message.content == ask(client, seed=5, temperature=1.0).choices[0].message.content
    assert both.choices[1].message.content == ask(client, seed=6, temperature=1.0).choices[0].message.content


def test_stop_string_cuts_the_reply_before_it(client):
    full = ask(client, seed=8, temperature=0, max_tokens=6).choices[0].message.content
    stop = full[2]
    cut = ask(client, seed=8, temperature=0, max_tokens=6, stop=[stop, "！！"]).choices[0]
    assert cut.message.content == full[:full.index(stop)] and cut.finish_reason == "stop"


def test_models_and_health(client, url):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_page_is_served_with_a_content_security_policy(url):
    page = httpx.get(url)
    assert page.status_code == 200 and 'id="new-conversation"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "access-control-allow-origin" not in httpx.options(f"{url}/v1/models", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}).headers


def test_401_without_the_right_key(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    response = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}]})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("options, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": -1}, "top_p"),
    ({"n": 9}, "n"),
    ({"max_tokens": 500}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"extra_body": {"tools": []}}, "tools"),
    ({"messages": [{"role": "assistant", "content": "你好"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "好" * 201}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
])
def test_400_names_the_bad_parameter(client, options, param):
    options.setdefault("messages", [{"role": "user", "content": "你好"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", **options)
    assert e.value.status_code == 400 and e.value.param == param, e.value.message


def test_a_lone_surrogate_in_a_message_is_read_as_the_replacement_character(client, url):
    # "\ud83d" is half of an emoji's UTF-16 pair: what a client that cut a message by UTF-16 length sends.
    body = '{"model": "tiny", "seed": 3, "messages": [{"role": "user", "content": "今天\\ud83d天气"}]}'
    response = httpx.post(f"{url}/v1/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    expected = client.chat.completions.create(model="tiny", seed=3, messages=[
        {"role": "user", "content": "今天\ufffd天气"}]).choices[0].message.content
    assert response.json()["choices"][0]["message"]["content"] == expected


def test_404_for_another_model_or_path(client, url):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "你好"}])
    assert e.value.code == "model_not_found"
    assert httpx.get(f"{url}/nowhere").json()["error"]["message"] == "Not Found"


def test_413_for_an_oversized_body(url):
    body = json.dumps({"messages": [{"role": "user", "content": "好" * 5000}]})
    response = httpx.post(f"{url}/v1/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_batched_replies_equal_the_same_requests_alone(slow):
    url, client = slow
    requests = [dict(seed=11, temperature=1.0), dict(seed=12, temperature=0), dict(seed=13, temperature=0.7)]
    alone = [ask(client, max_tokens=6, **r).choices[0].message.content for r in requests]
    together = [None] * len(requests)

    def run(i):
        together[i] = ask(client, max_tokens=6, **requests[i]).choices[0].message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]  # both rows of the batch
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert together[:2] == alone[:2]


def test_a_client_hanging_up_mid_stream_frees_its_slot_at_once(slow):
    url, client = slow
    before = httpx.get(f"{url}/health").json()["finished"]
    stream = ask(client, stream=True)  # 100 tokens at 20 ms each: 2 s unless cancelled
    next(iter(stream))
    stream.close()
    wait_for(lambda: httpx.get(f"{url}/health").json()["running"] == 0, "the cancelled request to leave")
    after = httpx.get(f"{url}/health").json()["finished"]
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1
    assert after.get("length", 0) == before.get("length", 0)


def test_a_client_hanging_up_before_a_whole_reply_frees_its_slot(slow):
    url, _ = slow
    before = httpx.get(f"{url}/health").json()["finished"]
    with pytest.raises(httpx.ReadTimeout):  # the reply needs 2 s; the client leaves after 0.3
        httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}]},
                   timeout=httpx.Timeout(5, read=0.3))
    wait_for(lambda: httpx.get(f"{url}/health").json()["running"] == 0, "the abandoned request to leave")
    after = httpx.get(f"{url}/health").json()["finished"]
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1


def test_429_when_the_queue_is_full_and_served_again_after(slow):
    url, client = slow
    holding = [ask(client, stream=True) for _ in range(2)]
    for stream in holding:
        next(iter(stream))
    with pytest.raises(openai.RateLimitError) as e:
        ask(client, max_tokens=1)
    assert e.value.status_code == 429 and e.value.code == "queue_full"
    for stream in holding:
        stream.close()
    wait_for(lambda: httpx.get(f"{url}/health").json()["running"] == 0, "the held requests to leave")
    assert ask(client, max_tokens=1).choices[0].finish_reason == "length"


def test_health_is_503_until_the_model_is_loaded(bot):
    loaded = threading.Event()

    def load():
        loaded.wait(10)
        return bot

    with running_server(create_app(load, settings()), ready=False) as url:
        assert httpx.get(f"{url}/health").status_code == 503
        response = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "你"}]})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
        loaded.set()
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, "the model to load")


def test_cli_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as e:
        serve_main(["--help"])
    assert e.value.code == 0 and "/v1/chat/completions" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        serve_main(["--port", "70000"])
    assert e.value.code == 2 and "--port" in capsys.readouterr().err


@pytest.mark.parametrize("argv, environ, message", [
    (["--api-key", ""], {}, "--api-key is empty, which would serve the API without a key"),
    (["--api-key", " "], {"CHATBOT_API_KEY": "k"}, "--api-key is empty"),
    ([], {"CHATBOT_API_KEY": ""}, "CHATBOT_API_KEY is empty, which would serve the API without a key"),
    (["--api-key", "钥匙"], {}, "--api-key must be printable ASCII without spaces"),
    (["--api-key", "a key"], {}, "--api-key must be printable ASCII without spaces"),
])
def test_cli_refuses_an_empty_or_unsendable_api_key_before_loading(argv, environ, message, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.delenv("CHATBOT_API_KEY", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as e:
        serve_main(["--model", str(tmp_path / "none"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "model folder" not in err


def test_the_api_key_is_the_flag_else_the_environment_else_none():
    assert ServeConfig(api_key="flag").api_key_in({"CHATBOT_API_KEY": "env"}) == "flag"
    assert ServeConfig().api_key_in({"CHATBOT_API_KEY": "env"}) == "env"
    assert ServeConfig().api_key_in({}) is None


def test_cli_names_a_missing_model_folder(tmp_path, capsys):
    assert serve_main(["--model", str(tmp_path / "none")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_cli_takes_a_hub_id_and_says_in_one_line_why_it_cannot_be_had(capsys):
    # Tests run with HF_HUB_OFFLINE=1 and no cached copy: the id is tried, never downloaded.
    assert serve_main(["--model", "no-such-org/no-such-model", "--dtype", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "no-such-org/no-such-model" in err and "offline" in err and len(err.strip().splitlines()) == 1


def test_model_folder_lays_out_chats_for_other_engines_as_chatbot_does(tiny_model_dir):
    from transformers import AutoTokenizer, GenerationConfig

    from chatbot.bot import ChatBot
    from chatbot.options import SamplingOptions

    messages = [*HISTORY, {"role": "user", "content": "在吗"}, {"role": "assistant", "content": "我很好"},
                {"role": "user", "content": "今天天气"}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # what vLLM loads
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    bot = ChatBot.from_pretrained(tiny_model_dir, "cpu")
    assert ids == bot.prompt("今天天气", ["你好", "你好吗", "在吗", "我很好"], max_new_tokens=8).input_ids
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    assert (generation.eos_token_id, generation.top_k) == (tokenizer.sep_token_id, SamplingOptions().top_k)
