"""Reply-quality metrics over generated replies and their references.

BLEU is sacrebleu's corpus BLEU with its `zh` tokenizer (each CJK character a token, other
text split like 13a), exponential smoothing, one reference per reply; BLEU-n is the cumulative
score over 1..n-grams (`max_ngram_order=n`). Distinct-n is the number of unique character
n-grams divided by all character n-grams, pooled over every reply (Li et al., 2016).
"""

from __future__ import annotations

import re

from sacrebleu.metrics import BLEU

# A unit of one or more characters repeated four or more times in a row ("哈哈哈哈", "好的好的好的好的").
_DEGENERATE = re.compile(r"(.+?)\1{3,}")


def bleu_scores(replies: list[str], references: list[str]) -> tuple[dict[str, float], str]:
    """({"bleu-1", "bleu-2", "bleu-4"}, sacrebleu signature) on a 0–100 scale."""
    scores, signature = {}, ""
    for n in (1, 2, 4):
        metric = BLEU(tokenize="zh", max_ngram_order=n)
        scores[f"bleu-{n}"] = metric.corpus_score(replies, [references]).score
        signature = metric.get_signature().format()
    return scores, signature


def distinct(replies: list[str], n: int) -> float:
    """Unique character n-grams / all character n-grams, over all replies (spaces ignored)."""
    grams = [r[i:i + n] for r in (x.replace(" ", "") for x in replies) for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(reply: str) -> bool:
    """Empty, or some unit repeated four or more times in a row."""
    return not reply.strip() or _DEGENERATE.search(reply.replace(" ", "")) is not None


def reply_metrics(replies: list[str], references: list[str]) -> dict:
    """BLEU-1/2/4, Distinct-1/2, mean reply length in characters, empty and repeated shares."""
    if len(replies) != len(references) or not replies:
        raise ValueError("need as many replies as references (and at least one), "
                         f"got {len(replies)} and {len(references)}")
    scores, signature = bleu_scores(replies, references)
    return {
        **scores,
        "distinct-1": distinct(replies, 1), "distinct-2": distinct(replies, 2),
        "avg_reply_chars": sum(len(r.replace(" ", "")) for r in replies) / len(replies),
        "empty_share": sum(not r.strip() for r in replies) / len(replies),
        "repeated_share": sum(bool(r.strip()) and is_degenerate(r) for r in replies) / len(replies),
        "bleu_signature": signature,
    }
