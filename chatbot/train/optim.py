"""What training updates and how fast: layer freezing, AdamW and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel


def apply_freeze(model: PreTrainedModel, spec: str | None) -> tuple[int, int]:
    """Freeze 'embeddings' or 'layers:N' (the embeddings and the first N blocks); (trainable, total).

    Raises:
        ValueError: if N exceeds the model's layers, or nothing is left to train.
    """
    if spec:
        body = model.transformer
        frozen = [model.get_input_embeddings(), body.wpe if hasattr(body, "wpe") else body.positions_embed]
        if spec.startswith("layers:"):
            n = int(spec.split(":")[1])
            if n > len(body.h):
                raise ValueError(f"--freeze {spec}: the model has only {len(body.h)} layers")
            frozen += list(body.h[:n])
        for module in frozen:
            module.requires_grad_(False)
    # lm_head shares its weight with the input embedding: freezing it freezes the output layer too.
    params = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    if trainable == 0:
        raise ValueError(f"--freeze {spec} leaves nothing to train")
    return trainable, sum(p.numel() for p in params)


def make_optimizer(model, *, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights, with fused kernels.

    Fused on the CPU too: the default per-tensor loop makes about a dozen passes over every
    parameter and its state, 25x slower than the fused kernel on configs/base.json here.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type in ("cuda", "cpu"))


def make_scheduler(optimizer: torch.optim.Optimizer, *, warmup: int, total: int,
                   kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate at each step: the optimizer's lr times `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, kind))


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Linear warmup to 1, then cosine or linear decay to 0 at `total` (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
