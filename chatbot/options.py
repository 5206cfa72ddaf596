"""Sampling options and their allowed ranges, in one table.

No torch here, so `chatbot-chat` checks its flags (and answers `--help`) without the seconds
that importing torch and transformers takes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from chatbot.flags import opt


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Inference precisions (`--dtype`, `ChatBot.from_pretrained(dtype=...)`); see chatbot.model.precision.
# Here, not there, so the CLI can offer them without importing torch.
DTYPES = ("auto", "fp32", "bf16", "int8")

# name -> (test, allowed range as shown to the user). One table serves the pure functions,
# `SamplingOptions` and the CLI's flag parsing, so a range is written once.
_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "temperature": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 = greedy)"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = off)"),
    "top_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1] (1 = off)"),
    "repetition_penalty": (lambda v: _is_number(v) and v >= 1, "a number >= 1 (1 = off)"),
    "penalize_context": (lambda v: isinstance(v, bool), "true or false"),
    "no_repeat_ngram_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = off)"),
    "min_new_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_new_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "num_candidates": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}


def check_options(**values) -> None:
    """Check sampling options by name against their allowed ranges.

    Raises:
        ValueError: naming the first bad option, its value and the allowed range.
    """
    for name, value in values.items():
        if name not in _CHECKS:
            raise ValueError(f"unknown sampling option {name!r}; known options: {', '.join(_CHECKS)}")
        test, allowed = _CHECKS[name]
        if not test(value):
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if values.get("min_new_tokens", 0) > values.get("max_new_tokens", math.inf):
        raise ValueError(f"min_new_tokens ({values['min_new_tokens']}) must be <= "
                         f"max_new_tokens ({values['max_new_tokens']})")


def check_seed(seed: object) -> None:
    """Check a sampling seed against what `torch.Generator.manual_seed` takes.

    Raises:
        ValueError: naming the seed and the allowed range.
    """
    if not (_is_int(seed) and 0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2**64) (what torch's generator takes), "
                         f"got {seed!r}")


def option_parser(name: str, kind: type) -> Callable[[str], int | float]:
    """Parses a flag's text into a sampling option, checked against its allowed range."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"expected {expected}, got {text!r}") from None
        check_options(**{name: value})
        return value

    return parse


def chitchat_top_p(text: str) -> float:
    """`parse` for GPT2-chitchat's `--topp`, where 0 (its default) turns nucleus sampling off: top_p 1 here,
    where top_p 0 keeps only the most likely token."""
    value = option_parser("top_p", float)(text)
    return 1.0 if value == 0 else value


@dataclass(frozen=True)
class SamplingOptions:
    """How replies are sampled: one set for chatbot-chat, chatbot-eval and chatbot-serve."""

    temperature: float = opt(1.0, "sampling temperature: divides the logits; 0 = always the likeliest token",
                             parse=option_parser("temperature", float), metavar="T")
    top_k: int = opt(8, "sample among the k most likely tokens; 0 = all", parse=option_parser("top_k", int),
                     aliases=("--topk",), metavar="K")
    top_p: float = opt(1.0, "nucleus sampling: the fewest tokens reaching this probability; 1 = off",
                       parse=option_parser("top_p", float), aliases=(("--topp", chitchat_top_p),),
                       metavar="P")
    repetition_penalty: float = opt(1.0, "> 1 makes tokens already in the reply less likely",
                                    parse=option_parser("repetition_penalty", float), metavar="X")
    penalize_context: bool = opt(False, "apply the repetition penalty to the conversation's tokens "
                                        "too, not only the reply's")
    # 3, not GPT2-chitchat's 0: on data/valid.txt it ends replies like 哈哈哈哈 without lowering
    # BLEU or Distinct-2 (README, "Choosing the sampling defaults").
    no_repeat_ngram_size: int = opt(3, "never repeat an n-gram of this size within a reply; 0 = off",
                                    flag="--no-repeat-ngram", aliases=("--no-repeat-ngram-size",),
                                    parse=option_parser("no_repeat_ngram_size", int), metavar="N")
    # [SEP] is not allowed before this many tokens, so no reply is empty.
    min_new_tokens: int = opt(1, "shortest reply, in tokens", aliases=("--min-len",),
                              parse=option_parser("min_new_tokens", int), metavar="N")
    max_new_tokens: int = opt(25, "longest reply, in tokens (--max-len is GPT2-chitchat's name for it)",
                              aliases=("--max-len",), parse=option_parser("max_new_tokens", int), metavar="N")
    num_candidates: int = opt(1, "replies sampled per message in one batch; > 1 needs --mmi-model",
                              flag="--candidates", aliases=("--num-candidates",),
                              parse=option_parser("num_candidates", int), metavar="N")

    def __post_init__(self):
        check_options(**asdict(self))

    def replace(self, **changes) -> SamplingOptions:
        """A copy with `changes` applied.

        Raises:
            ValueError: for an unknown option name or a value out of range.
        """
        check_options(**changes)  # names unknown options, which dataclasses.replace would not
        return dataclasses.replace(self, **changes)
