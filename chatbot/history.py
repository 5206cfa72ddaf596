"""Turn a conversation (a list of turns as ids) into the model's input, within its length limit.

The input is `[CLS] t1 [SEP] t2 [SEP] … tn [SEP]`, the same layout training uses, and the model's
reply is the next turn. Pure functions on ids: no tokenizer, no torch.
"""

from __future__ import annotations

# Turns the model sees by default, the new message included (GPT2-chitchat's --max_history_len).
MAX_HISTORY = 3


def join_turns(turns: list[list[int]], *, cls_id: int, sep_id: int) -> list[int]:
    """`[CLS] t1 [SEP] t2 [SEP] …`: the ids of `turns` in the training layout."""
    ids = [cls_id]
    for turn in turns:
        ids += turn
        ids.append(sep_id)
    return ids


def chat_template(*, cls_token: str, sep_token: str, max_history: int = MAX_HISTORY) -> str:
    """A Jinja chat template that renders the layout `join_turns` builds, for Hugging Face tools.

    `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` then gives the ids
    `ChatBot` feeds the model: the newest `max_history` messages, each followed by [SEP]. Roles
    alternate and are not marked; system messages are left out, as the model never saw one.
    The reply needs no prompt of its own: it starts right after the last [SEP].
    """
    return ("{%- set ns = namespace(turns=[]) -%}"
            "{%- for m in messages if m['role'] != 'system' -%}{%- set ns.turns = ns.turns + [m['content']] -%}"
            "{%- endfor -%}"
            f"{cls_token}{{%- for turn in ns.turns[-{max_history}:] -%}}{{{{ turn }}}}{sep_token}{{%- endfor -%}}")


def context_length(turns: list[list[int]]) -> int:
    """Length of `join_turns(turns)`: [CLS] plus each turn and its [SEP]."""
    return 1 + sum(len(turn) + 1 for turn in turns)


def fit_turns(turns: list[list[int]], *, max_history: int, max_len: int) -> tuple[list[list[int]], str | None]:
    """The turns the model sees when replying to the last one, so that they fit `max_len` tokens.

    Keeps the newest `max_history` turns (the last message included, as GPT2-chitchat counts
    them), then drops the oldest until the input fits. If the last message alone does not fit,
    it is cut from the left, keeping its end, which is what a reply answers.

    Args:
        turns: the conversation, oldest first, as ids without specials; the last is the message.
        max_len: the most tokens the joined input may have (the model's limit minus the reply's room).

    Returns:
        (the kept turns, a notice for the user when the message had to be cut, else None).

    Raises:
        ValueError: if `turns` is empty, `max_history` < 1, or `max_len` cannot hold even
            one token of the message.
    """
    if not turns:
        raise ValueError("fit_turns needs at least one turn (the message to reply to)")
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1 (it counts the message itself), got {max_history}")
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 ([CLS], one token, [SEP]), got {max_len}; "
                         "lower max_new_tokens so the reply leaves room for the message")
    turns = turns[-max_history:]
    while len(turns) > 1 and context_length(turns) > max_len:
        turns = turns[1:]
    room = max_len - 2  # what [CLS] and [SEP] leave for a lone message
    if len(turns[0]) <= room:
        return turns, None
    notice = (f"your message is {len(turns[0])} tokens, more than the {room} that fit beside the "
              f"reply; only its last {room} tokens were used")
    return [turns[0][-room:]], notice


def speaker_type_ids(ids: list[int], *, sep_id: int, speaker_ids: tuple[int, int]) -> tuple[list[int], int]:
    """Segment ids marking who speaks: turn i gets `speaker_ids[i % 2]`.

    A turn's [SEP] belongs to it, and the leading [CLS] to turn 0, as in training.

    Returns:
        (one segment id per input id, the segment id of the next turn, i.e. the reply).
    """
    types = []
    turn = 0
    for token_id in ids:
        types.append(speaker_ids[turn % 2])
        turn += token_id == sep_id
    return types, speaker_ids[turn % 2]
