"""Perplexity over the tokens the training loss uses."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from chatbot.data import IGNORE_INDEX, LengthGroupedBatchSampler
from chatbot.distributed import all_reduce_sum


@torch.no_grad()
def evaluate_loss(model, dataset, collate, *, batch_size: int, device: torch.device,
                  autocast_dtype: torch.dtype | None = None, rank: int = 0, world_size: int = 1,
                  progress: bool = False) -> dict[str, float]:
    """Mean loss per label token and perplexity, summed over all ranks' shares of `dataset`.

    Summing token losses (rather than averaging batch means) weights every token equally,
    whatever the batch it fell in.
    """
    was_training = model.training
    model.eval()
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=False,
                                        num_replicas=world_size, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    total, count = 0.0, 0
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        with amp:
            logits = model(**batch).logits
        # Position t predicts token t + 1, as in the model's own loss.
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    total, count = all_reduce_sum([total, float(count)], device)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation data has no tokens to score (check --loss-on and the data)")
    mean = total / count
    try:
        ppl = math.exp(mean)
    except OverflowError:
        ppl = float("inf")
    return {"loss": mean, "ppl": ppl, "tokens": int(count)}
