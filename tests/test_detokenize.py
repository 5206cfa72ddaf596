"""Token ids to reply text: the pieces handed out, what stop strings hold back and cut, finish reasons."""

import pytest

from chatbot.generate.detokenize import ReplyText, TextStream

pytestmark = pytest.mark.transformers_api


def ids(tokenizer, tokens: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(tokens.split())


def test_text_stream_hands_out_what_each_token_adds(tokenizer):
    stream = TextStream(tokenizer)
    pieces = [stream.add(i) for i in ids(tokenizer, "o ##k [speaker1] o 你 ！")]
    assert pieces == ["o", "k", "", " o", "你", "！"]
    assert stream.text == "ok o你！"


@pytest.mark.parametrize("tokens, stops, expected", [
    # [SEP] ends the reply and adds no text.
    ("你 好 [SEP]", [], [("你", None), ("好", None), ("", "stop")]),
    # The last token the decoder allows ends it with "length".
    ("你 好", [], [("你", None), ("好", "length")]),
    # 好 may start 好吗: held back, then cut with the stop string.
    ("你 好 吗 很", ["好吗"], [("你", None), ("", None), ("", "stop")]),
    # Held back, then handed out once the next token shows it is no stop string...
    ("你 好 很", ["好吗"], [("你", None), ("", None), ("好很", "length")]),
    # ... or when the reply ends.
    ("你 好 [SEP]", ["好吗"], [("你", None), ("", None), ("好", "stop")]),
    ("你 好", ["好吗"], [("你", None), ("好", "length")]),
    # A longer prefix is held back as it grows.
    ("你 今 天 很", ["今天气"], [("你", None), ("", None), ("", None), ("今天很", "length")]),
    # The first stop string in the text wins, whichever is listed first.
    ("今 天 气", ["气", "天"], [("今", None), ("", "stop")]),
    # Stop strings match the text as read, here the space the decoder puts between English words.
    ("o ##k o ##k", [" o"], [("o", None), ("k", None), ("", "stop")]),
    ("o ##k", ["k"], [("o", None), ("", "stop")]),
])
def test_reply_text_stops_and_holds_back(tokenizer, tokens, stops, expected):
    reply = ReplyText(TextStream(tokenizer), eos_id=tokenizer.sep_token_id, stops=stops)
    token_ids = ids(tokenizer, tokens)
    got = []
    for i, token_id in enumerate(token_ids):
        got.append((reply.add(token_id, last=i == len(token_ids) - 1), reply.finish_reason))
        if reply.finish_reason:
            break
    assert got == expected


def test_empty_stop_string_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"stop strings must not be empty, got \['a', ''\]"):
        ReplyText(TextStream(tokenizer), eos_id=tokenizer.sep_token_id, stops=["a", ""])
