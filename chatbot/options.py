"""Sampling options and their allowed ranges, in one table.

No torch here, so `chatbot-chat` checks its flags (and answers `--help`) without the seconds
that importing torch and transformers takes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Inference precisions (`--dtype`, `ChatBot.from_pretrained(dtype=...)`); see chatbot.precision.
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


@dataclass(frozen=True)
class SamplingOptions:
    """How replies are sampled; defaults follow GPT2-chitchat's interact.py."""

    temperature: float = 1.0  # divides the logits; 0 picks the most likely token (greedy)
    top_k: int = 8  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p (1 = all)
    repetition_penalty: float = 1.0  # > 1 makes already generated tokens less likely
    penalize_context: bool = False  # also penalise tokens of the conversation so far
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of the reply (0 = off)
    min_new_tokens: int = 1  # [SEP] is not allowed before this many tokens, so no empty reply
    max_new_tokens: int = 25  # reply length cap (GPT2-chitchat's --max_len)
    num_candidates: int = 1  # replies sampled in one batch (> 1 only with an MMI model)

    def __post_init__(self):
        check_options(**asdict(self))

    def replace(self, **changes) -> SamplingOptions:
        """A copy with `changes` applied.

        Raises:
            ValueError: for an unknown option name or a value out of range.
        """
        check_options(**changes)  # names unknown options, which dataclasses.replace would not
        return dataclasses.replace(self, **changes)
