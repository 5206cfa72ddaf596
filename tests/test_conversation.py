"""Conversations without a model: a fake generate function stands in for `ChatBot.generate`."""

import re

import pytest

from chatbot.conversation import Conversation, ConversationSettings, ConversationStore


def echo(text, history, **options):
    """A reply that shows what the conversation passed: how many turns it saw, then the message."""
    yield f"{len(history)}:"
    yield text


def test_history_keeps_max_history_plus_one_turns_and_generate_sees_them():
    conv = Conversation(echo, ConversationSettings(max_history=2))
    assert [conv.reply(text) for text in "abc"] == ["0:a", "2:b", "3:c"]
    assert conv.history == ["2:b", "c", "3:c"]
    assert conv.undo() == "c" and conv.history == ["2:b"]
    conv.reset()
    assert conv.history == [] and conv.undo() is None


def test_an_unfinished_stream_leaves_no_trace():
    conv = Conversation(echo, ConversationSettings())
    stream = conv.stream("a")
    assert next(stream) == "0:" and conv.busy
    stream.close()
    assert not conv.busy and conv.history == []


def test_store_forgets_the_least_recently_used_but_not_one_replying():
    store = ConversationStore(echo, ConversationSettings(max_conversations=1))
    a = store.get("a")
    replying = a.stream("你好")
    next(replying)
    assert store.get("b") is not store.get("b")  # a is replying, so it stays and b cannot
    assert store.get("a") is a
    replying.close()
    b = store.get("b")
    assert store.get("b") is b and store.get("a") is not a  # a idle now: forgotten for b


@pytest.mark.parametrize("setting, message", [
    ({"max_history": 0}, "max_history must be >= 1 (it counts the message itself), got 0"),
    ({"max_conversations": 0}, "max_conversations must be > 0 or None, got 0"),
    ({"conversation_ttl": -1.0}, "conversation_ttl must be > 0 or None, got -1.0"),
    ({"stream_timeout": 0}, "stream_timeout must be > 0, got 0"),
])
def test_settings_out_of_range_name_themselves(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ConversationSettings(**setting)
