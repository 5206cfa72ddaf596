import math

import pytest

from chatbot.metrics import distinct, is_degenerate, reply_metrics


def test_distinct_pools_character_ngrams():
    assert distinct(["你好你好", "好的"], 1) == pytest.approx(3 / 6)   # 你 好 的 / 6 chars
    assert distinct(["你好你好", "好的"], 2) == pytest.approx(3 / 4)   # 你好 好你 好的 / 4 bigrams
    assert distinct([""], 2) == 0.0


@pytest.mark.parametrize("reply, degenerate", [
    ("", True), ("  ", True), ("哈哈哈哈", True), ("好的好的好的好的", True),
    ("哈哈哈", False), ("我很好，谢谢", False), ("好的好的", False),
])
def test_is_degenerate(reply, degenerate):
    assert is_degenerate(reply) is degenerate


def test_reply_metrics_exact_values():
    m = reply_metrics(["我很好", "", "哈哈哈哈"], ["我很好", "今天天气好", "你好"])
    # 3 of 7 hypothesis characters match; 7 against 10 reference characters: brevity penalty e^(1 - 10/7).
    assert m["bleu-1"] == pytest.approx(100 * 3 / 7 * math.exp(1 - 10 / 7))
    assert m["distinct-1"] == pytest.approx(4 / 7) and m["avg_reply_chars"] == pytest.approx(7 / 3)
    assert m["empty_share"] == pytest.approx(1 / 3) and m["repeated_share"] == pytest.approx(1 / 3)
    assert m["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp")


def test_identical_replies_score_100():
    m = reply_metrics(["今天天气很好"], ["今天天气很好"])
    assert m["bleu-1"] == m["bleu-2"] == m["bleu-4"] == pytest.approx(100)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="got 1 and 2"):
        reply_metrics(["a"], ["a", "b"])
