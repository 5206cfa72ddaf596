"""The dialogue layouts: how turns become one id sequence, and back. The one owner of them.

CHITCHAT (ours and GPT2-chitchat's, and how encoded corpora are stored): `[CLS] u1 [SEP] u2 [SEP] … un [SEP]`.
A turn's closing `[SEP]` belongs to it, and the leading `[CLS]` to turn 0. With speaker ids,
turn i gets the `token_type_ids` of `[speaker1]` (i even) or `[speaker2]` (i odd).

CDIAL (CDial-GPT's LCCC models): `[CLS] [speaker1] u1 [speaker2] u2 … [speakerN] un [SEP]`. Each
turn opens with its speaker's token, `token_type_ids` are that token over the whole turn and
`[CLS]` over itself, and only the last turn (the reply) ends with `[SEP]`. It is built from the
CHITCHAT form (`cdial_layout`), one token longer.

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

# Turns the model sees by default, the new message included (GPT2-chitchat's --max_history_len).
MAX_HISTORY = 3
IGNORE_INDEX = -100  # label of positions the loss skips (torch's cross_entropy default)
LOSS_ON = ("all", "replies", "last")  # which turns carry loss; see `label_mask`

CHITCHAT, CDIAL = "chitchat", "cdial"
CDIAL_HEAD = (CLS, PAD, SEP, UNK)  # the first lines of CDial-GPT's vocab.txt, in this order
EXTRA_TOKENS = {CHITCHAT: 0, CDIAL: 1}  # tokens a layout adds to a dialogue stored as CHITCHAT


def join_turns(turns: list[list[int]], *, cls_id: int, sep_id: int) -> list[int]:
    """`[CLS] t1 [SEP] t2 [SEP] …`: the ids of `turns` in the training layout."""
    ids = [cls_id]
    for turn in turns:
        ids += turn
        ids.append(sep_id)
    return ids


def chat_template(layout: str = CHITCHAT, *, max_history: int = MAX_HISTORY) -> str:
    """A Jinja chat template that renders `layout` over the newest `max_history` messages, for
    Hugging Face tools: `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` then
    gives the ids `ChatBot` builds. Roles alternate and are not marked (turn i is spoken by
    `[speaker1]` for even i, as `cdial_layout` has it); system messages are left out, as the models
    never saw one. A CHITCHAT reply needs no prompt of its own: it starts after the last [SEP].
    """
    turns = ("{%- set ns = namespace(turns=[]) -%}"
             "{%- for m in messages if m['role'] != 'system' -%}"
             "{%- set ns.turns = ns.turns + [m['content']] -%}"
             "{%- endfor -%}"
             "{%- set turns = ns.turns[-" + str(max_history) + ":] -%}")
    if layout == CHITCHAT:
        return turns + CLS + "{%- for turn in turns -%}{{ turn }}" + SEP + "{%- endfor -%}"
    speakers = f"['{SPEAKER_TOKENS[0]}', '{SPEAKER_TOKENS[1]}']"
    return (turns + CLS
            + "{%- for turn in turns -%}{{ " + speakers + "[loop.index0 % 2] }}{{ turn }}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ " + speakers + "[(turns | length) % 2] }}{%- endif -%}")


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
    keep = turn >= _first_loss_turn(loss_on, int(turn[-1]))
    keep[0] = False
    return keep


def _first_loss_turn(loss_on: str, last_turn: int) -> int:
    return {"all": 0, "replies": 1, "last": last_turn}[loss_on]


def cdial_layout(ids: np.ndarray, *, sep_id: int, speaker_ids: tuple[int, int],
                 open_reply: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CDial-GPT's layout of a dialogue given as `[CLS] u1 [SEP] … un [SEP]`.

    Args:
        ids: the dialogue in the CHITCHAT layout, every turn closed by `sep_id`.
        speaker_ids: the ids of `[speaker1]` and `[speaker2]`; turn i is spoken by `speaker_ids[i % 2]`.
        open_reply: end with the next speaker's token instead of `[SEP]`: the input that asks the
            model for the next turn, as CDial-GPT's interact.py builds it.

    Returns:
        (ids, token_type_ids, turn): turn is the 0-based turn of each token that can carry loss
        (the turns' tokens and a final `[SEP]`), -1 for `[CLS]` and the speaker tokens.
    """
    ids = np.asarray(ids, dtype=np.int64)
    turn = turn_index(ids, sep_id)
    # Each [SEP] becomes the next turn's speaker token, but a final one ends the reply.
    opens = ids == sep_id
    opens[-1] = open_reply
    speakers = np.asarray(speaker_ids, dtype=np.int64)
    body_turn = np.where(opens, turn + 1, turn)[1:]
    out = np.concatenate([ids[:1], speakers[:1], np.where(opens, speakers[(turn + 1) % 2], ids)[1:]])
    types = np.concatenate([ids[:1], speakers[:1], speakers[body_turn % 2]])
    loss_turn = np.concatenate([[-1, -1], np.where(opens[1:], -1, body_turn)])
    return out, types, loss_turn


def cdial_example(ids: np.ndarray, *, sep_id: int, speaker_ids: tuple[int, int],
                  loss_on: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stored example in CDial-GPT's layout, for training: (ids, token_type_ids, loss mask).

    `loss_on` picks the turns as `label_mask` does ("last" is CDial-GPT's own training: the reply
    and its [SEP]); [CLS] and the speaker tokens never carry loss, as in CDial-GPT's train.py.
    """
    ids, types, turn = cdial_layout(ids, sep_id=sep_id, speaker_ids=speaker_ids)
    return ids, types, turn >= _first_loss_turn(loss_on, int(turn.max()))


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
