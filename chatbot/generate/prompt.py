"""What the model is given to reply: the turns it sees within its length limit, laid out as input ids.

    model = DialogueModel(model, tokenizer, training_args)   # its length limit, layout, speaker ids
    turns, notice = fit_turns(turns, max_history=3, max_len=model.max_len - max_new_tokens)
    prompt = Prompt(turns, *model.context(turns, cls_id=..., sep_id=...))

The input is laid out as `chatbot.layout` says (the layout training uses), and the model's
reply is the next turn. No tokenizer text here: turns arrive as ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import BertTokenizerFast, PreTrainedModel

from chatbot.layout import (
    CDIAL,
    cdial_layout,
    context_length,
    join_turns,
    speaker_token_ids,
    speaker_type_ids,
)
from chatbot.model.modeling import context_limit, dialogue_layout


@dataclass(frozen=True)
class Prompt:
    """What the model is given to reply to a message."""

    turns: list[list[int]]  # the turns kept, oldest first, as ids without specials
    input_ids: list[int]  # [CLS] t1 [SEP] t2 [SEP] ...
    token_type_ids: list[int] | None  # speaker segment ids, for models trained with them
    reply_type_id: int | None  # the reply's segment id, with token_type_ids


class DialogueModel:
    """A loaded model with what generation needs to know about it: its length limit, the layout
    it reads and its speaker ids."""

    def __init__(self, model: PreTrainedModel, tokenizer: BertTokenizerFast, training_args: dict):
        """Args:
            model: the loaded model.
            tokenizer: its tokenizer, whose vocabulary tells the layout and the speaker ids.
            training_args: what `chatbot-train` recorded beside it ({} for a public checkpoint).
        """
        self.model = model
        self.max_len = context_limit(model, training_args)
        self.layout = dialogue_layout(model.config.model_type, tokenizer, training_args)
        self.speaker_ids = None
        if self.layout == CDIAL or training_args.get("speaker_ids"):
            self.speaker_ids = speaker_token_ids(tokenizer.get_vocab())

    def context(self, turns: list[list[int]], *, cls_id: int,
                sep_id: int) -> tuple[list[int], list[int] | None, int | None]:
        """(input ids, token_type_ids or None, the reply's token type id or None) asking for the
        next turn: the fields of a `Prompt` after `turns`."""
        ids = join_turns(turns, cls_id=cls_id, sep_id=sep_id)
        if self.layout == CDIAL:
            ids, types, _ = cdial_layout(ids, sep_id=sep_id, speaker_ids=self.speaker_ids, open_reply=True)
            return ids.tolist(), types.tolist(), int(types[-1])
        if self.speaker_ids:
            return ids, *speaker_type_ids(ids, sep_id=sep_id, speaker_ids=self.speaker_ids)
        return ids, None, None


def fit_turns(turns: list[list[int]], *, max_history: int,
              max_len: int) -> tuple[list[list[int]], str | None]:
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
