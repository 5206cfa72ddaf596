"""Train a GPT-2 on encoded dialogues: setup -> loop -> evaluate -> checkpoint.

`train(cfg)` works the same on one CPU, one GPU, or several processes under torchrun (DDP).
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedModel

from chatbot.checkpoint import (
    check_finite_loss,
    check_finite_weights,
    load_state,
    prepare_output_dir,
    publish_model,
    resolve_resume,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from chatbot.config import TrainConfig
from chatbot.data import (
    IGNORE_INDEX,
    LengthGroupedBatchSampler,
    load_dataset,
    make_collate,
    padding_fraction,
    split_holdout,
)
from chatbot.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_flag,
    cleanup,
    setup_distributed,
)
from chatbot.evaluate import evaluate_loss
from chatbot.layout import CHITCHAT, EXTRA_TOKENS
from chatbot.modeling import build_model, dialogue_layout, load_gpt2_config, load_model, read_training_args
from chatbot.monitor import EXIT_SIGNAL, MetricsLog, StopRequest
from chatbot.reports import print_table, print_unk_rate
from chatbot.tokenization import load_tokenizer

BUNDLED_TRAIN, BUNDLED_VALID = "data/train.txt", "data/valid.txt"


@dataclass
class TrainResult:
    steps: int
    exit_code: int  # 0 when finished, 130/143 when stopped by SIGINT/SIGTERM after saving
    best_valid_ppl: float | None
    output_dir: Path
    model: PreTrainedModel  # the trained weights, unwrapped from DDP/compile


def setup_model(cfg: TrainConfig, resume_dir: Path | None):
    """(model, tokenizer, where it came from, its dialogue layout): a checkpoint, a pretrained
    folder or Hub id (see `load_model`), or a config."""
    source = resume_dir or cfg.pretrained
    if source is None:
        tokenizer = load_tokenizer(cfg.vocab)
        model = build_model(load_gpt2_config(cfg.config, tokenizer))
        return model, tokenizer, f"{cfg.config} (random init)", CHITCHAT
    model, tokenizer, saved_args = load_model(source, resize_embeddings=cfg.resize_embeddings)
    return model, tokenizer, str(source), dialogue_layout(model.config.model_type, tokenizer, saved_args)


def apply_freeze(model: PreTrainedModel, spec: str | None) -> tuple[int, int]:
    """Freeze 'embeddings' or 'layers:N' (the embeddings and the first N blocks); (trainable, total)."""
    if spec:
        body = model.transformer
        frozen = [model.get_input_embeddings(), body.wpe if hasattr(body, "wpe") else body.positions_embed]
        if spec.startswith("layers:"):
            n = int(spec.split(":")[1])
            if n > len(model.transformer.h):
                raise ValueError(f"--freeze {spec}: the model has only {len(model.transformer.h)} layers")
            frozen += list(model.transformer.h[:n])
        for module in frozen:
            module.requires_grad_(False)
    # lm_head shares its weight with the input embedding: freezing it freezes the output layer too.
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights; fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Linear warmup to 1, then cosine or linear decay to 0 at `total` (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool, str]:
    """(autocast dtype or None, use a GradScaler, name): auto is bf16 where supported, else fp16, fp32 on CPU."""
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, precision == "fp16", precision


def load_data(cfg: TrainConfig, tokenizer, max_len: int, info: DistInfo, device: torch.device):
    """(train, valid or None). Rank 0 encodes raw corpora into the cache while the others wait."""
    valid = cfg.valid
    if valid is None and not cfg.valid_ratio and cfg.train == BUNDLED_TRAIN and Path(BUNDLED_VALID).is_file():
        valid = BUNDLED_VALID
    common = dict(max_len=max_len, format=cfg.format, split=cfg.split, skip_bad=cfg.skip_bad,
                  progress=info.is_main and not cfg.quiet)
    for turn in ("main", "others") if info.enabled else ("main",):
        if (turn == "main") == info.is_main:
            train_set = load_dataset(cfg.train, tokenizer, **common)
            valid_set = load_dataset(valid, tokenizer, **common) if valid else None
        if info.enabled:
            torch.distributed.barrier()
    if info.is_main:
        print_unk_rate(train_set.meta, cfg.train, quiet=cfg.quiet)
    if cfg.valid_ratio:
        train_set, valid_set = split_holdout(train_set, cfg.valid_ratio, cfg.seed)
    if len(train_set) < info.world_size:
        raise ValueError(f"{cfg.train} gave {len(train_set)} training examples, fewer than the "
                         f"{info.world_size} processes; use more data")
    return train_set, valid_set


def _resolved_max_len(cfg: TrainConfig, model) -> int:
    n_positions = model.config.n_positions
    max_len = cfg.max_len or min(256, n_positions)
    if max_len > n_positions:
        raise ValueError(f"--max-len {max_len} exceeds the model's n_positions ({n_positions}); "
                         f"use --max-len {n_positions} or less, or a config with more positions")
    return max_len


def train(cfg: TrainConfig) -> TrainResult:
    """Run a whole training job as configured; see `chatbot-train --help`."""
    info, device = setup_distributed(cfg.device)
    try:
        return _train(cfg, info, device)
    finally:
        cleanup()


def _train(cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainResult:
    output_dir = prepare_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=info.is_main)
    resume_dir = resolve_resume(cfg.resume, output_dir, quiet=not info.is_main)
    _seed_everything(cfg.seed + info.rank)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model, tokenizer, source, layout = setup_model(cfg, resume_dir)
    max_len = _resolved_max_len(cfg, model)
    trainable, total_params = apply_freeze(model, cfg.freeze)
    if trainable == 0:
        raise ValueError(f"--freeze {cfg.freeze} leaves nothing to train")
    # Examples are stored as [CLS] u1 [SEP] …; the model's layout may add tokens to them.
    train_set, valid_set = load_data(cfg, tokenizer, max_len - EXTRA_TOKENS[layout], info, device)
    if cfg.eval_generate and valid_set is None:
        raise ValueError("--eval-generate needs validation data: give --valid FILE or --valid-ratio F")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(device).train()
    raw_model = model
    autocast_dtype, use_scaler, precision = resolve_precision(cfg.precision, device)
    if cfg.compile:
        model = torch.compile(model)
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    collate = make_collate(tokenizer, loss_on=cfg.loss_on, speaker_ids=cfg.speaker_ids, reverse=cfg.reverse,
                           layout=layout)
    sampler = LengthGroupedBatchSampler(train_set.lengths, cfg.batch_size, seed=cfg.seed,
                                        num_replicas=info.world_size, rank=info.rank)
    # A private generator: DataLoader otherwise draws its seed from the global RNG each epoch,
    # which would shift dropout masks after a resume.
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    micro_per_epoch = len(sampler)
    if micro_per_epoch == 0:
        raise ValueError(f"{cfg.train}: {len(train_set)} examples make no batch of {cfg.batch_size} "
                         f"on each of {info.world_size} processes")
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    optimizer = make_optimizer(raw_model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.scheduler))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    training_args = dict(cfg.to_dict(), max_len=max_len, source=source, layout=layout)

    state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "best_loss": None, "bad_evals": 0}
    if resume_dir is not None:
        saved = load_state(resume_dir)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        restore_rng_states(saved["rng"][min(info.rank, len(saved["rng"]) - 1)])
        state.update(saved["progress"])
        _warn_changed_args(resume_dir, training_args, info)

    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        sampler.set_epoch(0)
        pad = padding_fraction(train_set.lengths, sampler.rank_batches())
        if not cfg.quiet:
            print_table("chatbot-train", [
                ("model", source), ("parameters", total_params), ("trainable parameters", trainable),
                ("train examples / tokens", f"{len(train_set):,} / {int(train_set.lengths.sum()):,}"),
                ("valid examples", len(valid_set) if valid_set is not None else "none"),
                ("max_len / loss on", f"{max_len} / {cfg.loss_on}"),
                ("effective batch", f"{cfg.batch_size} x {cfg.grad_accum} accum x {info.world_size} proc = "
                                    f"{cfg.batch_size * cfg.grad_accum * info.world_size}"),
                ("padding (length-grouped)", f"{pad:.1%}"),
                ("steps", f"{total_steps:,} ({steps_per_epoch:,} per epoch, warmup {warmup:,})"),
                ("device / precision", f"{device} / {precision}"),
                ("resuming from", str(resume_dir) if resume_dir else "no"),
                ("output", str(output_dir)),
            ])
    log = MetricsLog(output_dir, info.is_main)

    saved_at = {"step": None, "eval": None}

    def save(path_step: int) -> Path | None:
        if saved_at["step"] == path_step:
            return None
        saved_at["step"] = path_step
        check_finite_weights(raw_model, f"checkpoint-{path_step}", output_dir)  # on every rank: all stop together
        ckpt_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "scaler": scaler.state_dict(), "progress": dict(state), "rng": _gather_rng(info)}
        if not info.is_main:
            return None
        return save_checkpoint(output_dir, path_step, raw_model, tokenizer, training_args, ckpt_state,
                               keep=cfg.save_total_limit)

    def validate() -> bool:
        """Evaluate, keep best/, and say whether patience ran out."""
        saved_at["eval"] = state["step"]
        metrics = evaluate_loss(raw_model, valid_set, collate, batch_size=cfg.batch_size, device=device,
                                autocast_dtype=autocast_dtype, rank=info.rank, world_size=info.world_size)
        check_finite_loss(metrics["loss"], state["step"], state["step"], output_dir)
        log.write({"step": state["step"], "epoch": state["epoch"], "valid_loss": metrics["loss"],
                   "valid_ppl": metrics["ppl"]})
        if state["best_loss"] is None or metrics["loss"] < state["best_loss"]:
            state["best_loss"], state["bad_evals"] = metrics["loss"], 0
            if info.is_main:
                publish_model(output_dir / "best", raw_model, tokenizer, dict(training_args, valid_ppl=metrics["ppl"]))
        else:
            state["bad_evals"] += 1
        if info.is_main and not cfg.quiet:
            tqdm.write(f"step {state['step']}: valid loss {metrics['loss']:.4f}, ppl {metrics['ppl']:.2f}")
        return bool(cfg.patience) and state["bad_evals"] >= cfg.patience

    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step",
               disable=not info.is_main or cfg.quiet, dynamic_ncols=True)
    window_loss = torch.zeros((), device=device)
    window_labels = torch.zeros((), dtype=torch.long, device=device)
    window_tokens = torch.zeros((), dtype=torch.long, device=device)
    window_start = time.perf_counter()
    stop_reason, exit_code = None, 0
    started = time.perf_counter()
    with StopRequest() as stop:
        while state["epoch"] < cfg.epochs and stop_reason is None:
            sampler.set_epoch(state["epoch"], start_batch=state["micro_in_epoch"])
            micro = state["micro_in_epoch"]
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                micro += 1
                sync = micro % cfg.grad_accum == 0 or micro == micro_per_epoch
                n_labels = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
                no_sync = model.no_sync() if info.enabled and not sync else nullcontext()
                amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
                with no_sync, amp:
                    loss = model(**batch).loss
                # Accumulated micro-batches each weigh 1/grad_accum of the step.
                scaler.scale(loss / cfg.grad_accum).backward()
                # Counters stay on the device: reading them every micro-step would stall a GPU.
                window_loss += loss.detach() * n_labels
                window_labels += n_labels
                window_tokens += batch["attention_mask"].sum()
                if not sync:
                    continue
                if cfg.max_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state["step"] += 1
                state["micro_in_epoch"] = micro
                bar.update(1)
                if state["step"] % cfg.log_steps == 0 or state["step"] == total_steps:
                    loss_sum, labels, tokens = all_reduce_sum(
                        [window_loss.item(), window_labels.item(), window_tokens.item()], device)
                    elapsed = time.perf_counter() - window_start
                    row = {"step": state["step"], "epoch": state["epoch"], "loss": loss_sum / max(labels, 1),
                           "lr": scheduler.get_last_lr()[0], "tokens": int(tokens), "tokens_per_s": tokens / elapsed}
                    check_finite_loss(row["loss"], state["step"],
                                      (state["step"] - 1) // cfg.log_steps * cfg.log_steps + 1, output_dir)
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:,.0f}")
                    for counter in (window_loss, window_labels, window_tokens):
                        counter.zero_()
                    window_start = time.perf_counter()
                if valid_set is not None and cfg.eval_steps and state["step"] % cfg.eval_steps == 0 and validate():
                    stop_reason = f"no improvement in {cfg.patience} validations"
                if cfg.save_steps and state["step"] % cfg.save_steps == 0:
                    save(state["step"])
                if broadcast_flag(stop.signum is not None, device):
                    save(state["step"])
                    exit_code = EXIT_SIGNAL.get(stop.signum, 130)
                    stop_reason = "interrupted"
                if cfg.max_steps and state["step"] >= total_steps and stop_reason is None:
                    stop_reason = f"reached {total_steps} steps"
                if stop_reason:
                    break
            else:  # the epoch ran to its end
                state["epoch"] += 1
                state["micro_in_epoch"] = 0
                if valid_set is not None and validate():
                    stop_reason = f"no improvement in {cfg.patience} validations"
                save(state["step"])
    bar.close()
    if exit_code:
        log.close()
        if info.is_main:
            print(f"stopped at step {state['step']}; checkpoint saved. Resume with the same command plus "
                  f"--resume auto (or --resume {output_dir / ('checkpoint-' + str(state['step']))})")
        return TrainResult(state["step"], exit_code, None, output_dir, raw_model)
    if valid_set is not None and saved_at["eval"] != state["step"]:
        validate()  # stopped mid-epoch by --max-steps: the final model still gets a score
    save(state["step"])
    log.close()
    best_ppl = math.exp(state["best_loss"]) if state["best_loss"] is not None else None
    if info.is_main:
        publish_model(output_dir / "final", raw_model, tokenizer, training_args)
        if cfg.eval_generate:
            _evaluate_replies(raw_model, tokenizer, training_args, valid_set, cfg, state["step"], output_dir)
        if not cfg.quiet:
            print_table("training finished", [
                ("steps", state["step"]), ("epochs completed", state["epoch"]),
                ("time", f"{time.perf_counter() - started:.0f} s"), ("stopped because", stop_reason or "all epochs done"),
                ("best valid perplexity", f"{best_ppl:.2f}" if best_ppl else "no validation data"),
                ("final model", str(output_dir / "final")),
                ("best model", str(output_dir / "best") if best_ppl else "-"),
                ("chat with it", f"chatbot-chat --model {output_dir / 'final'}"),
            ])
    return TrainResult(state["step"], 0, best_ppl, output_dir, raw_model)


def _evaluate_replies(model, tokenizer, training_args: dict, valid_set, cfg: TrainConfig, step: int,
                      output_dir: Path) -> None:
    """--eval-generate: reply metrics of the final model on N validation dialogues, logged and shown."""
    from chatbot.bot import ChatBot
    from chatbot.evaluate import CDIAL_SAMPLING, evaluate_generation, sample_indices
    from chatbot.reports import print_eval_report

    model.eval()
    bot = ChatBot(model, tokenizer, training_args=training_args)
    indices = sample_indices(len(valid_set), cfg.eval_generate, cfg.seed)
    metrics, samples = evaluate_generation(bot, valid_set, indices, sampling=CDIAL_SAMPLING, seed=cfg.seed)
    with open(output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "eval_generate": metrics}, ensure_ascii=False) + "\n")
    if not cfg.quiet:
        print_eval_report({"model": str(output_dir / "final"), "data": "validation set", "examples": len(indices),
                           "loss_on": cfg.loss_on, "perplexity": None,
                           "generation": {"sampled": {"options": CDIAL_SAMPLING, **metrics}},
                           "samples": {"sampled": samples}}, examples=3)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _gather_rng(info: DistInfo) -> list[dict]:
    """Every rank's RNG states, in rank order, so each rank resumes its own dropout stream."""
    mine = rng_states()
    if not info.enabled:
        return [mine]
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def _warn_changed_args(resume_dir: Path, current: dict, info: DistInfo) -> None:
    saved = read_training_args(resume_dir)
    keys = ("train", "batch_size", "grad_accum", "seed", "max_len", "loss_on", "reverse", "speaker_ids", "lr")
    changed = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if changed and info.is_main:
        print(f"warning: resuming {resume_dir} with changed settings ({'; '.join(changed)}); "
              "the run will not match an uninterrupted one")
