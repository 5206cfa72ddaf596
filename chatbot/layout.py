"""The dialogue layouts: how turns become one id sequence. The one owner of them.

CHITCHAT: `[CLS] u1 [SEP] u2 [SEP] … un [SEP]` (GPT2-chitchat's, the one encoded corpora store).
CDIAL: `[CLS] [speaker1] u1 [speaker2] u2 … [speakerN] un [SEP]`, CDial-GPT's: each turn opens
with its speaker's token, `token_type_ids` are that token over the whole turn and `[CLS]` over
itself, and only the last turn (the reply) ends with `[SEP]`.

Pure functions on ids and the token names: no tokenizer, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SPEAKER_TOKENS = ("[speaker1]", "[speaker2]")
CHITCHAT, CDIAL = "chitchat", "cdial"
LAYOUTS = (CHITCHAT, CDIAL)
CDIAL_HEAD = ("[CLS]", "[PAD]", "[SEP]", "[UNK]")  # the first lines of CDial-GPT's vocab.txt
# Tokens a layout adds to an example stored as `[CLS] u1 [SEP] … un [SEP]`.
EXTRA_TOKENS = {CHITCHAT: 0, CDIAL: 1}


def cdial_layout(ids: np.ndarray, *, sep_id: int, speaker_ids: tuple[int, int],
                 open_reply: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CDial-GPT's layout of `[CLS] u1 [SEP] … un [SEP]` (one token longer).

    Args:
        ids: a dialogue in the CHITCHAT layout, every turn closed by `sep_id`.
        speaker_ids: the ids of `[speaker1]` and `[speaker2]`; turn i is spoken by `speaker_ids[i % 2]`.
        open_reply: end with the next speaker's token instead of `[SEP]`: the input that asks the
            model for the next turn, as CDial-GPT's interact.py builds it.

    Returns:
        (ids, token_type_ids, turn) where turn is the 0-based turn of each token that can carry
        loss (the turns' tokens and the final `[SEP]`), -1 for `[CLS]` and the speaker tokens.
    """
    ids = np.asarray(ids, dtype=np.int64)
    is_sep = ids == sep_id
    turn = np.cumsum(is_sep) - is_sep  # a [SEP] belongs to the turn it closes
    # Each [SEP] becomes the next turn's speaker token, except a final one that ends the reply.
    opens = is_sep.copy()
    opens[-1] = open_reply
    speakers = np.asarray(speaker_ids, dtype=np.int64)
    body_turn = np.where(opens, turn + 1, turn)[1:]
    out = np.concatenate([ids[:1], speakers[:1], np.where(opens, speakers[(turn + 1) % 2], ids)[1:]])
    types = np.concatenate([ids[:1], speakers[[0]], speakers[body_turn % 2]])
    loss_turn = np.concatenate([[-1, -1], np.where(opens[1:], -1, body_turn)])
    return out, types, loss_turn


def cdial_example(ids: np.ndarray, *, sep_id: int, speaker_ids: tuple[int, int],
                  loss_on: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stored example in CDial-GPT's layout, for training: (ids, token_type_ids, loss mask).

    `loss_on` picks the turns as in the CHITCHAT layout ("last" is CDial-GPT's own training: the
    reply and its [SEP]); [CLS] and the speaker tokens never carry loss, as in CDial-GPT's train.py.
    """
    ids, types, turn = cdial_layout(ids, sep_id=sep_id, speaker_ids=speaker_ids)
    first = {"all": 0, "replies": 1, "last": turn.max()}[loss_on]
    return ids, types, turn >= first


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
