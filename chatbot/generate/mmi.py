"""Maximum mutual information reranking (DialoGPT): prefer the reply that best predicts its context.

A backward model is trained on dialogues with the turn order reversed, so it reads
`[CLS] reply [SEP] message [SEP] older turn [SEP] …` and its loss on the part after the reply
measures how well the reply accounts for what was said. Generic replies ("哈哈") explain little
and score badly, which is the point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from chatbot.layout import IGNORE_INDEX, context_length, join_turns, speaker_type_ids


def backward_input(reply: list[int], turns: list[list[int]], *, cls_id: int, sep_id: int,
                   max_len: int) -> tuple[list[int], int]:
    """The backward model's input for one candidate, cropped to `max_len` tokens.

    Args:
        reply: the candidate's ids.
        turns: the forward context's turns, oldest first (the message last).
        max_len: the backward model's length limit; the oldest turns are dropped to fit.

    Returns:
        (ids, the number of leading ids that are `[CLS] reply [SEP]` and are not scored).
    """
    while turns and context_length([reply, *turns]) > max_len:
        turns = turns[1:]  # drop the oldest, which sits at the end of the reversed input
    ids = join_turns([reply, *reversed(turns)], cls_id=cls_id, sep_id=sep_id)
    return ids[:max_len], len(reply) + 2


@torch.inference_mode()
def score_replies(model: PreTrainedModel, replies: list[list[int]], turns: list[list[int]], *, cls_id: int,
                  sep_id: int, pad_id: int, max_len: int,
                  speaker_ids: tuple[int, int] | None = None) -> list[float]:
    """The backward model's mean loss of the context given each reply, in one batch.

    Args:
        model: the backward model.
        replies: candidate replies as ids.
        turns: the context turns, oldest first, the message last.
        max_len: the backward model's length limit (see `backward_input`).
        speaker_ids: the ([speaker1], [speaker2]) ids if the backward model was trained with them.

    Returns:
        One loss per reply; lower is better.
    """
    rows = [backward_input(r, turns, cls_id=cls_id, sep_id=sep_id, max_len=max_len) for r in replies]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T), right-padded
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    types = torch.zeros_like(input_ids) if speaker_ids else None
    for row, (ids, skip) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, skip:len(ids)] = torch.tensor(ids[skip:])
        if types is not None:
            segments, _ = speaker_type_ids(ids, sep_id=sep_id, speaker_ids=speaker_ids)
            types[row, :len(ids)] = torch.tensor(segments)
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    mask = (torch.arange(width)[None] < lengths[:, None]).long()  # (B, T): 0 on padding
    device = model.device
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                   token_type_ids=None if types is None else types.to(device)).logits.float()
    # Token t predicts token t+1.
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].to(device),
                             ignore_index=IGNORE_INDEX, reduction="none")  # (B, T-1)
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1).to(device)
    return (losses.sum(1) / counts).tolist()
