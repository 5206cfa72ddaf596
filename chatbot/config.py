"""Training options: one dataclass of commented defaults, checked as a whole before any work.

`chatbot-train` builds one flag per field (`--batch-size` for `batch_size`) with the field's
help text, so this file is the single place a default lives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from chatbot.corpus import FORMATS
from chatbot.layout import LOSS_ON, SPEAKER_TOKENS


def opt(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    # data
    train: str = opt("data/train.txt", "training corpus (txt, LCCC json, jsonl, text) or a chatbot-preprocess folder")
    valid: str | None = opt(None, "validation corpus or folder (default: data/valid.txt when training on the "
                                  "bundled sample, else none)")
    valid_ratio: float = opt(0.0, "hold out this share of the training examples for validation instead of --valid")
    format: str = opt("auto", "corpus format", choices=FORMATS)
    split: str | None = opt(None, "LCCC split to read (train, valid, test)", metavar="NAME")
    skip_bad: bool = opt(False, "skip unreadable corpus records instead of stopping")
    max_len: int | None = opt(None, "tokens per training example (default: min(256, the model's n_positions))")
    loss_on: str = opt("all", "tokens that carry loss: all, replies (every turn but the first), last (final turn)",
                       choices=LOSS_ON)
    speaker_ids: bool = opt(False, f"add {'/'.join(SPEAKER_TOKENS)} token_type_ids alternating by turn")
    reverse: bool = opt(False, "train on dialogues with the turn order reversed (a backward model for MMI)")
    # model
    config: str = opt("configs/tiny.json", "GPT2Config JSON for a model trained from scratch")
    pretrained: str | None = opt(None, "fine-tune this model folder or Hugging Face Hub id: GPT-2 (uer/gpt2-chinese-*) "
                                       "or CDial-GPT (thu-coai/CDial-GPT_LCCC-*), in its own layout; its tokenizer is used")
    vocab: str = opt("vocab/vocab.txt", "vocab.txt for a model trained from scratch")
    resize_embeddings: bool = opt(False, "grow a pretrained model's embedding to its tokenizer's size")
    freeze: str | None = opt(None, "keep weights fixed: 'embeddings', or 'layers:N' (embeddings and the first N blocks)",
                             metavar="WHAT")
    # optimisation
    epochs: int = opt(40, "passes over the training data")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run all epochs)")
    batch_size: int = opt(16, "examples per device per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(5e-4, "peak learning rate (fine-tuning a pretrained model: try 1e-4 or lower)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_steps: int | None = opt(None, "linear warmup steps (overrides --warmup-ratio)")
    warmup_ratio: float = opt(0.05, "share of all steps spent warming up")
    scheduler: str = opt("cosine", "decay after warmup", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = opt(42, "random seed (each process adds its rank)")
    # hardware
    device: str = opt("auto", "auto, cpu, cuda or cuda:N (torchrun picks cuda:LOCAL_RANK)", metavar="DEVICE")
    precision: str = opt("auto", "auto (bf16, else fp16 on GPU; fp32 on CPU), fp32, bf16 or fp16",
                         choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the model (faster steps after a slow first one)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    num_workers: int = opt(0, "DataLoader worker processes")
    # evaluation, checkpoints, logging
    output_dir: str = opt("model", "where checkpoints, best/, final/ and metrics.jsonl go")
    eval_steps: int = opt(0, "also validate every N optimizer steps (0: once per epoch)")
    patience: int = opt(0, "stop after N validations without improvement (0: never)")
    save_steps: int = opt(0, "also save a checkpoint every N optimizer steps (0: once per epoch)")
    save_total_limit: int = opt(2, "keep only the newest N checkpoint-* folders (0: keep all)")
    log_steps: int = opt(10, "write metrics every N optimizer steps")
    resume: str | None = opt(None, "'auto' (newest readable checkpoint in --output-dir) or a checkpoint folder",
                             metavar="auto|PATH")
    overwrite: bool = opt(False, "start afresh in an --output-dir holding a previous run, deleting that run's "
                                 "checkpoints, best/, final/ and metrics (nothing else in it is touched)")
    eval_generate: int = opt(0, "after training, generate replies for N validation dialogues and log BLEU/Distinct")
    quiet: bool = opt(False, "no progress bar or tables")

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"), ("max_steps", self.max_steps >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"), ("grad_accum", self.grad_accum >= 1, ">= 1"),
            ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, ">= 0 and finite"),
            ("warmup_steps", self.warmup_steps is None or self.warmup_steps >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("valid_ratio", 0 <= self.valid_ratio < 1, "in [0, 1)"),
            ("max_grad_norm", 0 <= self.max_grad_norm < math.inf, ">= 0 and finite"),
            ("max_len", self.max_len is None or self.max_len >= 4, ">= 4"),
            ("eval_steps", self.eval_steps >= 0, ">= 0"), ("save_steps", self.save_steps >= 0, ">= 0"),
            ("patience", self.patience >= 0, ">= 0"), ("save_total_limit", self.save_total_limit >= 0, ">= 0"),
            ("log_steps", self.log_steps >= 1, ">= 1"), ("num_workers", self.num_workers >= 0, ">= 0"),
            ("eval_generate", self.eval_generate >= 0, ">= 0"),
            ("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "auto, cpu, cuda or cuda:N"),
            ("freeze", self.freeze is None or re.fullmatch(r"embeddings|layers:\d+", self.freeze) is not None,
             "'embeddings' or 'layers:N'"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(self, name)!r}")
        if self.overwrite and self.resume:
            raise ValueError("give either --overwrite (start afresh) or --resume (continue), not both")
        if self.valid and self.valid_ratio:
            raise ValueError("give either --valid or --valid-ratio, not both")
        if self.format == "text" and self.loss_on != "all":
            raise ValueError("--format text has no turns: use --loss-on all")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
