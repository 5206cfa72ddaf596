"""The dialogue layout: how turns become one id sequence, and back. The one owner of it.

Every example, every chat input and every MMI input is `[CLS] u1 [SEP] u2 [SEP] … un [SEP]`:
a turn's closing `[SEP]` belongs to it, and the leading `[CLS]` to turn 0. With speaker ids,
turn i gets the `token_type_ids` of `[speaker1]` (i even) or `[speaker2]` (i odd).

Pure functions on ids and the token names: no tokenizer, no torch (so flag parsing can use
`LOSS_ON` without loading them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPEAKER_TOKENS = ("[speaker1]", "[speaker2]")
REQUIRED_TOKENS = (PAD, UNK, CLS, SEP)  # a vocabulary without them cannot express the layout
# The head of a vocabulary we write, in this order: [PAD] must be id 0, as padding and embeddings assume.
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK, *SPEAKER_TOKENS]

IGNORE_INDEX = -100  # label of positions the loss skips (torch's cross_entropy default)
LOSS_ON = ("all", "replies", "last")  # which turns carry loss; see `label_mask`


def join_turns(turns: list[list[int]], *, cls_id: int, sep_id: int) -> list[int]:
    """`[CLS] t1 [SEP] t2 [SEP] …`: the ids of `turns` in the training layout."""
    ids = [cls_id]
    for turn in turns:
        ids += turn
        ids.append(sep_id)
    return ids


def context_length(turns: list[list[int]]) -> int:
    """Length of `join_turns(turns)`: [CLS] plus each turn and its [SEP]."""
    return 1 + sum(len(turn) + 1 for turn in turns)


def split_at(ids: list[int], sep_id: int) -> list[list[int]]:
    """`ids` cut at every `sep_id` (dropped): [a, S, b, c] -> [[a], [b, c]]."""
    parts, start = [], 0
    while True:
        try:
            end = ids.index(sep_id, start)
        except ValueError:
            parts.append(ids[start:])
            return parts
        parts.append(ids[start:end])
        start = end + 1


def split_turns(ids: list[int], sep_id: int) -> list[list[int]]:
    """The inverse of `join_turns`: `[CLS] a [SEP] b [SEP]` -> [[a], [b]]."""
    # Every turn ends with [SEP], so the last part split_at returns is the empty tail.
    return split_at(list(ids[1:]), sep_id)[:-1]


def turn_index(ids: np.ndarray, sep_id: int) -> np.ndarray:
    """The 0-based turn of each position; a turn's closing [SEP] belongs to it.

    `[CLS] a a [SEP] b [SEP]` -> `0 0 0 0 1 1`.
    """
    is_sep = (ids == sep_id).astype(np.int64)
    return np.cumsum(is_sep) - is_sep


def reverse_turns(ids: np.ndarray, sep_id: int) -> np.ndarray:
    """`[CLS] a [SEP] b [SEP]` -> `[CLS] b [SEP] a [SEP]` (the backward model of MMI reads this)."""
    body = ids[1:]
    ends = np.flatnonzero(body == sep_id) + 1
    turns = np.split(body, ends[:-1])
    return np.concatenate([ids[:1], *turns[::-1]])


def label_mask(ids: np.ndarray, sep_id: int, loss_on: str) -> np.ndarray:
    """True where a position carries loss.

    loss_on: "all" every token (GPT2-chitchat), "replies" every turn but the first (DialoGPT),
    "last" only the final turn (CDial-GPT). A turn's closing [SEP] counts as part of it, so the
    model learns where replies end; [CLS] is given, never predicted.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    turn = turn_index(ids, sep_id)
    first = {"all": 0, "replies": 1, "last": turn[-1]}[loss_on]
    keep = turn >= first
    keep[0] = False
    return keep


def speaker_type_ids(ids: list[int], *, sep_id: int, speaker_ids: tuple[int, int]) -> tuple[list[int], int]:
    """Segment ids marking who speaks: turn i gets `speaker_ids[i % 2]`.

    Returns:
        (one segment id per input id, the segment id of the next turn, i.e. the reply).
    """
    turn = turn_index(np.asarray(ids, dtype=np.int64), sep_id)
    next_turn = int(turn[-1]) + (ids[-1] == sep_id) if len(ids) else 0
    return np.asarray(speaker_ids)[turn % 2].tolist(), speaker_ids[next_turn % 2]


def speaker_token_ids(vocab: Mapping[str, int]) -> tuple[int, int]:
    """The ids of `[speaker1]` and `[speaker2]` in a token -> id table.

    Raises:
        ValueError: if the vocabulary lacks either.
    """
    missing = [t for t in SPEAKER_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"speaker ids need {' and '.join(SPEAKER_TOKENS)} in the vocabulary, which lacks "
                         f"{', '.join(missing)}; use vocab/vocab.txt (it has them) or the tokenizer saved "
                         "with the model")
    return vocab[SPEAKER_TOKENS[0]], vocab[SPEAKER_TOKENS[1]]
