"""Choose the turns of a conversation the model sees, within its length limit.

The input is laid out as `chatbot.layout` says (the layout training uses), and the model's
reply is the next turn. Pure functions on ids: no tokenizer, no torch.
"""

from __future__ import annotations

# MAX_HISTORY, join_turns and speaker_type_ids are re-exported: they lived here before chatbot.layout.
from chatbot.layout import MAX_HISTORY, context_length, join_turns, speaker_type_ids  # noqa: F401


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

