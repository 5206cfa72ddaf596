import io
import logging
import re
import runpy
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

import chatbot
from chatbot.bot import ChatBot
from chatbot.distributed import resolve_device
from chatbot.generate.mmi import backward_input, score_replies
from chatbot.generate.prompt import fit_turns
from chatbot.layout import join_turns, speaker_type_ids
from chatbot.model.modeling import save_model
from chatbot.tokenization import encode_texts
from tests.conftest import tiny_config

pytestmark = pytest.mark.transformers_api

CLS, SEP, SPK1, SPK2 = 2, 3, 5, 6
EXAMPLE = Path(__file__).parents[1] / "examples" / "bot.py"


@pytest.fixture
def bot(tiny_model_dir):
    return ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=8)


def test_fit_turns_keeps_the_newest_max_history_turns():
    turns = [[10], [11, 12], [13], [14, 15]]
    assert fit_turns(turns, max_history=3, max_len=100) == ([[11, 12], [13], [14, 15]], None)
    assert fit_turns(turns, max_history=1, max_len=100) == ([[14, 15]], None)


def test_fit_turns_drops_oldest_turns_to_fit_the_length():
    turns = [[10], [11, 12], [13], [14, 15]]
    # [CLS] 13 [SEP] 14 15 [SEP] is 6 tokens; one more turn would make 9.
    assert fit_turns(turns, max_history=4, max_len=8) == ([[13], [14, 15]], None)


def test_fit_turns_cuts_an_overlong_message_from_the_left_with_a_notice():
    turns, notice = fit_turns([[10], list(range(100))], max_history=3, max_len=6)
    assert turns == [[96, 97, 98, 99]]
    assert notice == ("your message is 100 tokens, more than the 4 that fit beside the reply; "
                      "only its last 4 tokens were used")


def test_join_turns_and_speaker_ids_follow_the_training_layout():
    ids = join_turns([[10, 11], [12], [13]], cls_id=CLS, sep_id=SEP)
    assert ids == [CLS, 10, 11, SEP, 12, SEP, 13, SEP]
    assert speaker_type_ids(ids, sep_id=SEP, speaker_ids=(SPK1, SPK2)) == (
        [SPK1, SPK1, SPK1, SPK1, SPK2, SPK2, SPK1, SPK1], SPK2)


def test_backward_input_reverses_the_turns_and_drops_the_oldest_to_fit():
    turns = [[10, 11], [12], [13]]
    assert backward_input([20, 21], turns, cls_id=CLS, sep_id=SEP, max_len=100) == (
        [CLS, 20, 21, SEP, 13, SEP, 12, SEP, 10, 11, SEP], 4)
    assert backward_input([20, 21], turns, cls_id=CLS, sep_id=SEP, max_len=8) == (
        [CLS, 20, 21, SEP, 13, SEP, 12, SEP], 4)


def test_batched_mmi_scores_equal_one_by_one_losses(tiny_model):
    replies, turns = [[10], [11, 12, 13], [14, 15]], [[7, 8], [9]]
    batched = score_replies(tiny_model, replies, turns, cls_id=CLS, sep_id=SEP, pad_id=0, max_len=64)
    for reply, score in zip(replies, batched):
        ids, skip = backward_input(reply, turns, cls_id=CLS, sep_id=SEP, max_len=64)
        labels = torch.tensor([[-100] * skip + ids[skip:]])
        with torch.inference_mode():
            loss = tiny_model(input_ids=torch.tensor([ids]), labels=labels).loss
        assert score == pytest.approx(float(loss), abs=1e-5)


def test_reply_is_reproducible_and_keeps_history(bot):
    first = bot.reply("你好", seed=1)
    assert bot.history == ["你好", first]
    assert bot.reply("你好", history=[], seed=1) == first  # stateless: history unchanged
    assert bot.history == ["你好", first]
    bot.reset()
    assert bot.history == []


def test_stream_pieces_join_to_the_reply(bot):
    pieces = list(bot.stream("ok 你好", history=["谢谢"], seed=3))
    assert len(pieces) > 1
    assert "".join(pieces) == bot.reply("ok 你好", history=["谢谢"], seed=3)


def test_replies_never_show_hidden_tokens_or_raw_pieces(bot):
    for seed in range(10):
        text = bot.reply("ok", history=[], seed=seed, temperature=2.0, top_k=0)
        assert "[" not in text and "##" not in text
        assert len(text) > 0  # min_new_tokens=1 by default


def test_a_huge_message_is_cut_with_a_notice_not_a_crash(bot, caplog):
    with caplog.at_level(logging.WARNING):
        reply = bot.reply("你好吗" * 5000, history=["谢谢"] * 50, seed=0)
    assert isinstance(reply, str)
    assert "only its last" in caplog.text


def test_a_lone_surrogate_is_read_as_the_replacement_character(bot):
    # "\ud83d" is half of an emoji's UTF-16 pair: what a message cut by UTF-16 length ends with.
    # BERT's normalizer drops U+FFFD, so 你\ufffd好 reads as 你好.
    assert encode_texts(bot.tokenizer, ["你\ud83d好", "\udcff"]) == [[7, 8], []]
    reply = bot.reply("你\ud83d好", history=["\udcff谢谢"], seed=1)
    assert reply == bot.reply("你\ufffd好", history=["\ufffd谢谢"], seed=1) and reply


def test_speaker_ids_from_training_args_reach_the_model(tmp_path, tiny_model, tokenizer):
    folder = save_model(tmp_path / "spk", tiny_model, tokenizer, {"speaker_ids": True})
    bot = ChatBot.from_pretrained(folder, device="cpu", max_new_tokens=3, min_new_tokens=3)
    seen = []
    # Each forward pass embeds the token ids, then the segment ids, with the token embedding.
    bot._forward.model.transformer.wte.register_forward_pre_hook(lambda m, args: seen.append(args[0].tolist()))
    bot.reply("你好", history=["谢谢"])  # [CLS] 谢谢 [SEP] 你好 [SEP]: turns 0 and 1, reply is turn 2
    assert seen[1::2] == [[[SPK1] * 4 + [SPK2] * 3], [[SPK1]], [[SPK1]]]


def test_mmi_picks_a_candidate_in_one_batch(tmp_path, tiny_model_dir, tokenizer):
    torch.manual_seed(1)
    backward = save_model(tmp_path / "back", GPT2LMHeadModel(tiny_config(tokenizer)), tokenizer,
                          {"reverse": True})
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", mmi_model=backward, max_new_tokens=6)
    batches = []
    bot._backward.model.register_forward_pre_hook(lambda m, args, kw: batches.append(len(kw["input_ids"])),
                                                  with_kwargs=True)
    reply = bot.reply("你好", seed=0, num_candidates=4)
    assert batches == [4]
    assert reply and bot.history == ["你好", reply]


def test_several_candidates_without_mmi_is_refused(bot):
    with pytest.raises(ValueError, match="num_candidates=2 needs an MMI model"):
        bot.reply("你好", num_candidates=2)


def test_bad_per_call_option_names_itself(bot):
    with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\].*got 2"):
        bot.reply("你好", top_p=2)
    with pytest.raises(ValueError, match=r"max_new_tokens \(--max-len\) must be <= 29 for this model"):
        bot.reply("你好", max_new_tokens=40)


@pytest.mark.parametrize("seed", [2**70, 2**64, -1, True, 1.5])
def test_a_seed_torch_cannot_take_is_refused_by_name(bot, seed):
    with pytest.raises(ValueError, match=rf"^seed must be an integer in \[0, 2\*\*64\) \(what torch's generator "
                                         rf"takes\), got {re.escape(repr(seed))}$"):
        bot.reply("你好", history=[], seed=seed)
    assert bot.reply("你好", history=[], seed=2**64 - 1)  # the largest seed there is


def test_missing_or_incomplete_model_folder_says_what_and_how(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match=r"model folder not found: .*nope.*chatbot-train"):
        ChatBot.from_pretrained(tmp_path / "nope", device="cpu")
    (tiny_model_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny-model is not a complete model folder: missing "
                                                r"model.safetensors.*chatbot-train"):
        ChatBot.from_pretrained(tiny_model_dir, device="cpu")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_chatbot_is_exported_lazily():
    assert chatbot.ChatBot is ChatBot


def test_eight_threads_eight_conversations_no_crossed_history(tmp_path, tokenizer):
    # Large random weights make replies depend on the history, so a crossed history shows.
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config(tokenizer, initializer_range=0.5))
    bot = ChatBot.from_pretrained(save_model(tmp_path / "m", model, tokenizer, {}), device="cpu",
                                  max_new_tokens=8)
    chars = "你好吗我很谢今天气"
    users = [f"user-{i}" for i in range(8)]
    messages = {u: [chars[i] + chars[(2 * i + 1) % 9], "谢谢", "今天" + chars[i]] for i, u in enumerate(users)}

    def talk(user, conv):
        return [conv.reply(m, seed=i) for i, m in enumerate(messages[user])]

    # What each conversation must look like, computed one at a time.
    expected = {u: talk(u, bot.conversation(f"solo-{u}")) for u in users}
    assert len({tuple(replies) for replies in expected.values()}) == len(users)
    results, errors = {}, []

    def worker(user):
        try:
            results[user] = talk(user, bot.conversation(user))
        except Exception as e:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for u in users:
        assert results[u] == expected[u]
        # max_history 3 + 1 turns are kept: what the model sees next, and what /retry needs.
        assert bot.conversation(u).history == [t for pair in zip(messages[u], expected[u]) for t in pair][-4:]
    assert bot.history == []


def test_example_bot_serves_several_users(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bot.py", "--model", str(tiny_model_dir), "--device", "cpu",
                                      "--seed", "0"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("alice: 你好\nbob: 谢谢\nno colon here\nalice: 今天\n"))
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "bob", "alice"]
    assert "expected 'user: message'" in out.err


def reply_in_thread(conv, text: str, timeout: float = 20) -> str:
    """conv.reply(text), failing the test instead of hanging if the conversation stays locked."""
    result = []
    thread = threading.Thread(target=lambda: result.append(conv.reply(text, seed=0)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "reply() blocked: the conversation stayed locked"
    return result[0]


@pytest.mark.parametrize("drop", ["close", "del"])
def test_a_closed_or_dropped_stream_releases_its_conversation_at_once(tiny_model_dir, drop):
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=8, min_new_tokens=8,
                                  stream_timeout=1e6)
    conv = bot.conversation("u")
    stream = conv.stream("你好")
    next(stream)
    if drop == "close":
        stream.close()
    else:
        del stream  # CPython closes a generator when its last reference goes
    assert reply_in_thread(conv, "谢谢") == bot.reply("谢谢", history=[], seed=0)
    assert conv.history[0] == "谢谢"


def test_an_unread_stream_lets_the_next_turn_go_after_the_timeout(tiny_model_dir):
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=8, min_new_tokens=8,
                                  stream_timeout=0.2)
    conv = bot.conversation("u")
    kept = conv.stream("你好")  # read once, then neither read nor closed, as a broken client leaves it
    next(kept)
    assert reply_in_thread(conv, "谢谢") == bot.reply("谢谢", history=[], seed=0)
    with pytest.raises(RuntimeError, match="left unread for more than 0.2 s"):
        next(kept)
    assert conv.history[0] == "谢谢" and len(conv.history) == 2


def test_history_keeps_only_what_the_model_and_retry_can_use(tiny_model_dir):
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=2, max_history=3)
    full = []
    for i in range(10):
        full += [f"你{i % 3}", bot.reply(f"你{i % 3}", seed=i)]
    assert bot.history == full[-4:]
    # what the model saw is unchanged by the trimming
    assert bot.reply("好", seed=99) == bot.reply("好", history=full, seed=99)


def test_conversations_are_forgotten_least_recently_used_first_and_after_the_ttl(tiny_model_dir, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("chatbot.conversation._now", lambda: clock[0])
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_conversations=2, conversation_ttl=60)
    a, b = bot.conversation("a"), bot.conversation("b")
    assert bot.conversation("a") is a
    bot.conversation("c")  # over the limit: b was used least recently
    assert bot.conversation("a") is a and bot.conversation("b") is not b
    clock[0] = 61.0
    assert bot.conversation("c") is not None and bot.conversation("a") is not a  # a idle for 61 s
    with pytest.raises(ValueError, match="max_conversations must be > 0 or None, got 0"):
        ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_conversations=0)
