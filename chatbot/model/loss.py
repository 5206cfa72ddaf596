"""The training loss: cross-entropy of each labelled next token, computed only where it counts.

    loss = next_token_loss(model, labels, input_ids=..., attention_mask=...)

The same quantity as transformers' `model(..., labels=labels).loss`: the hidden state at
position t is scored against labels[t + 1], positions labelled IGNORE_INDEX are skipped, and
the result is the mean over the scored tokens. transformers computes the logits at every
position first; here the hidden states of the scored positions are gathered before the output
layer, so padding, the last position and turns that carry no loss (`--loss-on replies|last`)
never reach the vocabulary-sized matmul and softmax, the largest part of a small model's step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from chatbot.layout import IGNORE_INDEX


def next_token_loss(model: PreTrainedModel, labels: torch.Tensor, *, reduction: str = "mean",
                    **inputs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits at position t against `labels[:, t + 1]` where that label is kept.

    Args:
        model: a GPT-2 or OpenAI GPT LM-head model.
        labels: (B, T) token ids, IGNORE_INDEX where no loss applies.
        reduction: "mean" over the scored tokens, or "sum".
        inputs: the model's other inputs (`input_ids`, `attention_mask`, `token_type_ids`).
    """
    hidden = model.base_model(**inputs)[0]  # (B, T, H)
    targets = labels[:, 1:]  # (B, T - 1)
    scored = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][scored])  # (N, V), N = scored tokens
    # In fp32 whatever autocast computed the logits in, as transformers does.
    return F.cross_entropy(logits.float(), targets[scored], reduction=reduction)


class NextTokenLoss(nn.Module):
    """A GPT-2 (or OpenAI GPT) LM-head model whose forward returns `next_token_loss`.

    The training loop calls (and DDP or torch.compile wrap) this module; the model inside is
    the one that is saved, its parameters unchanged.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return next_token_loss(self.model, labels, **inputs)
