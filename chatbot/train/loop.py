"""Train a GPT-2 on encoded dialogues: `setup(cfg) -> Run`, `fit(run)`, `finish(run)`.

`train(cfg)` runs the three and works the same on one CPU, one GPU, or several processes
under torchrun (DDP). `setup` does every check and derivation before any step; each pass of
`fit`'s loop is one optimizer step over `grad_accum` micro-batches; `finish` scores, saves and
publishes the final model.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import PreTrainedModel

from chatbot.config import HOLDOUT_MIN_EXAMPLES, TrainConfig
from chatbot.data.dataset import (LengthGroupedBatchSampler, load_dataset, make_collate, make_loader,
                                  padding_fraction, split_holdout)
from chatbot.distributed import (
    DistInfo,
    broadcast_flag,
    cleanup,
    main_process_first,
    setup_distributed,
)
from chatbot.evaluate import EvalReport, evaluate_loss, evaluate_trained_replies
from chatbot.layout import EXTRA_TOKENS, IGNORE_INDEX
from chatbot.model.hf_files import write_model_card
from chatbot.model.loss import NextTokenLoss
from chatbot.model.lora import adapter_base, apply_lora
from chatbot.model.modeling import model_reference, model_to_train, read_training_args, resolve_model_dir
from chatbot.model.precision import resolve_precision
from chatbot.model.weights import verified_digests
from chatbot.reports import print_eval_report, print_table, print_unk_rate
from chatbot.train.allocator import keep_freed_memory
from chatbot.train.checkpoint import (
    TrainState,
    check_finite_loss,
    check_finite_weights,
    check_lora_resume,
    open_output_dir,
    publish_model,
    restore_trainer_state,
    save_checkpoint,
    seed_everything,
    trainer_state,
    warn_changed_args,
)
from chatbot.train.monitor import EXIT_SIGNAL, MetricsLog, StopRequest, Window, survive_closed_output
from chatbot.train.optim import apply_freeze, make_optimizer, make_scheduler


@dataclass
class TrainResult:
    steps: int
    exit_code: int  # 0 when finished, 130/143 when stopped by SIGINT/SIGTERM after saving
    best_valid_ppl: float | None
    output_dir: Path
    model: PreTrainedModel  # the trained weights, unwrapped from DDP/compile


@dataclass(kw_only=True)
class Run:
    """Everything `setup` builds; `fit` and `finish` work on it."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    model: torch.nn.Module  # what the loop calls: NextTokenLoss(raw_model), compiled and/or wrapped in DDP
    raw_model: PreTrainedModel  # what is saved
    tokenizer: object
    training_args: dict  # the options plus what was derived from them, saved beside the weights
    train_set: object
    valid_set: object | None
    collate: object
    sampler: LengthGroupedBatchSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    micro_per_epoch: int
    total_steps: int
    window: Window
    # Opened once setup has printed its plan: tqdm draws its bar and wandb prints as they open.
    log: MetricsLog | None = None
    bar: tqdm | None = None
    state: TrainState = field(default_factory=TrainState)
    batches: Iterator | None = None  # the current epoch's micro-batches
    saved_step: int | None = None  # step of the last checkpoint, so none is written twice
    saved_at: float = field(default_factory=time.perf_counter)  # when it was written (rank 0's clock decides)
    evaluated_step: int | None = None
    evaluated_ppl: float | None = None  # validation perplexity at evaluated_step
    stop_reason: str | None = None
    exit_code: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)


def train(cfg: TrainConfig) -> TrainResult:
    """Run a whole training job as configured; see `chatbot-train --help`."""
    run = None
    try:
        with survive_closed_output():  # a dead `| tee` must not cost the checkpoint a Ctrl-C asks for
            run = setup(cfg)
            fit(run)
            return finish(run)
    finally:
        # The DDP wrapper's reducer holds the process group: freed after destroy_process_group,
        # gloo's destructor can wait forever on a peer that has already left. An exception's
        # traceback may keep `run` alive, so drop the wrapper itself.
        if run is not None:
            run.model = None
        cleanup()


# ---------------------------------------------------------------- setup


def setup(cfg: TrainConfig) -> Run:
    """Build the model, data, optimizer and log; restore a checkpoint when resuming. Fails before any step."""
    info, device = setup_distributed(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()  # a third of a small model's CPU step went into page faults without it
    _, resume_dir = open_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, info=info)
    seed_everything(cfg.seed + info.rank)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if resume_dir is not None:
        check_lora_resume(resume_dir, cfg.lora_settings())
    model, tokenizer, source, layout = model_to_train(resume_dir=resume_dir, pretrained=cfg.pretrained,
                                                      config=cfg.config, vocab=cfg.vocab,
                                                      resize_embeddings=cfg.resize_embeddings)
    lora_args = _setup_lora(cfg, info, model, tokenizer, source=source, layout=layout, resume_dir=resume_dir)
    max_len = cfg.resolved_max_len(model.config.n_positions)
    params = apply_freeze(model, cfg.freeze)
    train_set, valid_set, valid_ratio = setup_data(cfg, info, tokenizer, max_len=max_len, layout=layout)
    raw_model, model, autocast_dtype, use_scaler, precision = _place_model(model, cfg, info, device)
    collate = make_collate(tokenizer, loss_on=cfg.loss_on, speaker_ids=cfg.speaker_ids, reverse=cfg.reverse,
                           layout=layout)
    sampler, loader = make_loader(train_set, collate, batch_size=cfg.batch_size, seed=cfg.seed,
                                  rank=info.rank, world_size=info.world_size, num_workers=cfg.num_workers,
                                  pin_memory=device.type == "cuda")
    if len(sampler) == 0:
        raise ValueError(f"{cfg.train}: {len(train_set)} examples make no batch of {cfg.batch_size} "
                         f"on each of {info.world_size} processes")
    total_steps = cfg.total_steps(math.ceil(len(sampler) / cfg.grad_accum))
    warmup = cfg.warmup(total_steps)
    optimizer = make_optimizer(raw_model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    run = Run(cfg=cfg, info=info, device=device, model=model, raw_model=raw_model, tokenizer=tokenizer,
              training_args=dict(cfg.recorded(), valid=cfg.valid_path(), valid_ratio=valid_ratio,
                                 max_len=max_len, source=source, layout=layout, **lora_args),
              train_set=train_set, valid_set=valid_set, collate=collate, sampler=sampler, loader=loader,
              optimizer=optimizer,
              scheduler=make_scheduler(optimizer, warmup=warmup, total=total_steps, kind=cfg.scheduler),
              scaler=torch.amp.GradScaler(device.type, enabled=use_scaler), autocast_dtype=autocast_dtype,
              micro_per_epoch=len(sampler), total_steps=total_steps, window=Window.on(device))
    if resume_dir is not None:
        run.state = restore_trainer_state(resume_dir, optimizer, run.scheduler, run.scaler, rank=info.rank)
        if info.is_main:
            warn_changed_args(resume_dir, run.training_args)
    if info.is_main:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.quiet:
            _print_plan(run, source=source, params=params, warmup=warmup, precision=precision,
                        resume_dir=resume_dir)
    run.log = MetricsLog(run.output_dir, info.is_main, cfg.report_to, run.training_args,
                         start_step=run.state.step)
    run.bar = tqdm(total=total_steps, initial=run.state.step, desc="training", unit="step",
                   disable=not info.is_main or cfg.quiet, dynamic_ncols=True)
    return run


def setup_data(cfg: TrainConfig, info: DistInfo, tokenizer, *, max_len: int, layout: str):
    """(train, valid or None, share held out of train): corpora encoded once into the cache, or
    chatbot-preprocess folders.

    Raises:
        ValueError: if there are fewer training examples than processes, or --eval-generate has
            no validation data.
    """
    # Examples are stored as [CLS] u1 [SEP] …; the model's layout may add tokens to them.
    common = dict(max_len=max_len - EXTRA_TOKENS[layout], format=cfg.format, split=cfg.split,
                  skip_bad=cfg.skip_bad, progress=info.is_main and not cfg.quiet)
    valid = cfg.valid_path()
    with main_process_first(info):  # rank 0 encodes raw corpora into the cache, the others then read it
        train_set = load_dataset(cfg.train, tokenizer, **common)
        valid_set = load_dataset(valid, tokenizer, **common) if valid else None
    if info.is_main:
        print_unk_rate(train_set.meta, cfg.train, quiet=cfg.quiet)
    valid_ratio = cfg.holdout_ratio(len(train_set))
    if valid_ratio:
        train_set, valid_set = split_holdout(train_set, valid_ratio, cfg.seed)
    if len(train_set) < info.world_size:
        raise ValueError(f"{cfg.train} gave {len(train_set)} training examples, fewer than the "
                         f"{info.world_size} processes; use more data")
    if cfg.eval_generate and valid_set is None:
        raise ValueError("--eval-generate needs validation data: give --valid FILE or --valid-ratio F")
    return train_set, valid_set, valid_ratio


def _setup_lora(cfg: TrainConfig, info: DistInfo, model, tokenizer, *, source: str, layout: str,
                resume_dir: Path | None) -> dict:
    """--lora-r: adapters on the frozen model (a resumed LoRA checkpoint has its own already), and what
    training_args records of the base they adapt ({} without LoRA).

    The base is the --pretrained folder or Hub id; a run from a config first saves its random weights
    as the run's base/. `base_sha256` lets a resume, and whoever loads the adapter alone, see that the
    base is still the one trained on.
    """
    settings = cfg.lora_settings()
    if settings is None:
        return {}
    if resume_dir is not None:
        return {"base_sha256": read_training_args(resume_dir).get("base_sha256")}
    base_dir = Path(cfg.output_dir) / "base"
    with main_process_first(info):
        if cfg.pretrained is None and info.is_main:
            base_dir.parent.mkdir(parents=True, exist_ok=True)
            publish_model(base_dir, model, tokenizer, {"source": source, "layout": layout})
        base = model_reference(cfg.pretrained or base_dir)
        # Its manifest: model_to_train has just verified it, or publish_model written it.
        digests = verified_digests(resolve_model_dir(base))
    apply_lora(model, settings, base=base)
    return {"base_sha256": digests}


def _place_model(model, cfg: TrainConfig, info: DistInfo, device: torch.device):
    """(raw model, model the loop calls, autocast dtype, use a GradScaler, precision name)."""
    if cfg.gradient_checkpointing:
        # transformers 5.24 renamed it (the old name warns, to go in v6); older 5.x have only the old one.
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
    model.to(device).train()
    raw_model = model
    autocast_dtype, use_scaler, precision = resolve_precision(cfg.precision, device)
    model = NextTokenLoss(raw_model)
    if cfg.compile:
        model = torch.compile(model)
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return raw_model, model, autocast_dtype, use_scaler, precision


def _print_plan(run: Run, *, source: str, params: tuple[int, int], warmup: int, precision: str,
                resume_dir: Path | None) -> None:
    cfg, info, train_set = run.cfg, run.info, run.train_set
    run.sampler.set_epoch(0)
    pad = padding_fraction(train_set.lengths, run.sampler.rank_batches())
    steps_per_epoch = math.ceil(run.micro_per_epoch / cfg.grad_accum)
    print_table("chatbot-train", [
        ("model", source), ("parameters", params[1]),
        ("trainable parameters", f"{params[0]:,} ({params[0] / params[1]:.2%})"),
        *_lora_plan(run),
        ("train examples / tokens", f"{len(train_set):,} / {int(train_set.lengths.sum()):,}"),
        ("valid examples", _valid_source(run)),
        ("max_len / loss on", f"{run.training_args['max_len']} / {cfg.loss_on}"),
        ("effective batch", f"{cfg.batch_size} x {cfg.grad_accum} accum x {info.world_size} proc = "
                            f"{cfg.batch_size * cfg.grad_accum * info.world_size}"),
        ("padding (length-grouped)", f"{pad:.1%}"),
        ("steps", f"{run.total_steps:,} ({steps_per_epoch:,} per epoch, warmup {warmup:,})"),
        ("early stopping", f"after {cfg.patience} validations without improvement"
                           if cfg.patience and run.valid_set is not None else "off"),
        ("checkpoints", _save_plan(cfg)),
        ("device / precision", f"{run.device} / {precision}"),
        ("resuming from", str(resume_dir) if resume_dir else "no"),
        ("output", str(run.output_dir)),
    ])


def _lora_plan(run: Run) -> list[tuple[str, str]]:
    """The start table's LoRA row: its settings and the base it adapts (none without --lora-r)."""
    settings = run.cfg.lora_settings()
    return [("LoRA", f"{settings.describe()}; base {adapter_base(run.raw_model)}")] if settings else []


def _valid_source(run: Run) -> str:
    """How many validation examples, and where they come from."""
    cfg, ratio = run.cfg, run.training_args["valid_ratio"]
    if run.valid_set is None:
        if cfg.valid_ratio == 0:
            return "none (--valid-ratio 0)"
        return (f"none: {len(run.train_set):,} examples are too few to hold some out "
                f"(< {HOLDOUT_MIN_EXAMPLES}); give --valid FILE or --valid-ratio F")
    if not ratio:
        return f"{len(run.valid_set):,} ({run.training_args['valid']})"
    given = "--valid-ratio" if cfg.valid_ratio is not None else "by default; --valid-ratio 0 for none"
    return f"{len(run.valid_set):,} ({ratio:.1%} held out of the training data, {given})"


def _save_plan(cfg: TrainConfig) -> str:
    when = [f"every {cfg.save_steps:,} steps"] if cfg.save_steps else []
    when += [f"every {cfg.save_minutes:g} min"] if cfg.save_minutes else []
    kept = f"newest {cfg.save_total_limit} kept" if cfg.save_total_limit else "all kept"
    return f"{', '.join(when + ['at the end'])}; {kept}"


# ---------------------------------------------------------------- fit


def fit(run: Run) -> None:
    """Optimizer steps until `stop_reason` says stop. One pass of the loop is one step."""
    cfg, st = run.cfg, run.state
    with StopRequest() as signals:
        while (reason := stop_reason(run, signals)) is None:
            if st.micro_in_epoch == run.micro_per_epoch:  # the epoch ran to its end
                end_epoch(run)
                continue
            if run.batches is None:
                run.sampler.set_epoch(st.epoch, start_batch=st.micro_in_epoch)
                run.batches = iter(run.loader)
            # forward/backward: the step's micro-batches; DDP syncs gradients on the last one only
            n_micro = min(cfg.grad_accum, run.micro_per_epoch - st.micro_in_epoch)
            for i in range(n_micro):
                batch = {k: v.to(run.device, non_blocking=True) for k, v in next(run.batches).items()}
                _forward_backward(run, batch, sync=i == n_micro - 1)
            st.micro_in_epoch += n_micro
            # clip
            if cfg.max_grad_norm:
                run.scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.max_grad_norm)
            # step
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            st.step += 1
            run.bar.update(1)
            # log
            if st.step % cfg.log_steps == 0 or st.step == run.total_steps:
                log_window(run)
            # evaluate
            if run.valid_set is not None and cfg.eval_steps and st.step % cfg.eval_steps == 0:
                validate(run)
            # save
            if save_due(run):
                save(run)
    run.stop_reason = reason
    if reason == "interrupted":
        run.exit_code = EXIT_SIGNAL.get(signals.signum, 130)
        save(run)


def _forward_backward(run: Run, batch: dict, *, sync: bool) -> None:
    n_labels = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    no_sync = run.model.no_sync() if run.info.enabled and not sync else nullcontext()
    amp = torch.autocast(run.device.type, dtype=run.autocast_dtype) if run.autocast_dtype else nullcontext()
    with no_sync, amp:
        loss = run.model(**batch)
    # Accumulated micro-batches each weigh 1/grad_accum of the step.
    run.scaler.scale(loss / run.cfg.grad_accum).backward()
    run.window.add(loss, n_labels, batch["attention_mask"].sum())


def stop_reason(run: Run, signals: StopRequest) -> str | None:
    """Why training stops now, or None to go on. The one place that decides; every rank agrees."""
    cfg, st = run.cfg, run.state
    if broadcast_flag(signals.signum is not None, run.device):
        return "interrupted"
    if cfg.max_steps and st.step >= run.total_steps:
        return f"reached {run.total_steps} steps"
    if cfg.patience and st.bad_evals >= cfg.patience:
        return f"no improvement in {cfg.patience} validations"
    if st.epoch >= cfg.epochs:
        return "all epochs done"
    return None


def end_epoch(run: Run) -> None:
    run.state.epoch += 1
    run.state.micro_in_epoch = 0
    run.batches = None
    if run.valid_set is not None:
        validate(run)


def save_due(run: Run) -> bool:
    """Every --save-steps steps, and at the first logged step --save-minutes after the last checkpoint.

    Not at every epoch's end: on a small corpus that wrote a checkpoint every few seconds. The time is
    looked at only on logged steps, where every rank is, and rank 0's clock decides for all.
    """
    cfg, step = run.cfg, run.state.step
    if cfg.save_steps and step % cfg.save_steps == 0:
        return True
    if not cfg.save_minutes or step % cfg.log_steps:
        return False
    return broadcast_flag(time.perf_counter() - run.saved_at >= 60 * cfg.save_minutes, run.device)


def log_window(run: Run) -> None:
    """One metrics row for the steps since the last one, summed over all ranks."""
    st = run.state
    loss, tokens, tokens_per_s = run.window.totals()
    row = {"step": st.step, "epoch": st.epoch, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
           "tokens": tokens, "tokens_per_s": tokens_per_s}
    log_steps = run.cfg.log_steps
    check_finite_loss(row["loss"], st.step, (st.step - 1) // log_steps * log_steps + 1, run.output_dir)
    run.log.write(row)
    run.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:,.0f}")
    run.window = Window.on(run.device)


def validate(run: Run) -> None:
    """Validation loss; keeps best/ and counts validations without improvement."""
    st, info = run.state, run.info
    run.evaluated_step = st.step
    metrics = evaluate_loss(run.raw_model, run.valid_set, run.collate, batch_size=run.cfg.batch_size,
                            device=run.device, autocast_dtype=run.autocast_dtype, rank=info.rank,
                            world_size=info.world_size)
    check_finite_loss(metrics["loss"], st.step, st.step, run.output_dir)
    run.evaluated_ppl = metrics["ppl"]
    run.log.write({"step": st.step, "epoch": st.epoch, "valid_loss": metrics["loss"],
                   "valid_ppl": metrics["ppl"]})
    if st.best_loss is None or metrics["loss"] < st.best_loss:
        st.best_loss, st.bad_evals = metrics["loss"], 0
        if info.is_main:
            publish_model(run.output_dir / "best", run.raw_model, run.tokenizer,
                          dict(run.training_args, valid_ppl=metrics["ppl"]), _results(run))
    else:
        st.bad_evals += 1
    if info.is_main and not run.cfg.quiet:
        tqdm.write(f"step {st.step}: valid loss {metrics['loss']:.4f}, ppl {metrics['ppl']:.2f}")


def save(run: Run) -> Path | None:
    """A checkpoint of the current step (once per step), on rank 0; every rank takes part."""
    if run.saved_step == run.state.step:
        return None
    run.saved_step, run.saved_at = run.state.step, time.perf_counter()
    # On every rank, so that all stop together.
    check_finite_weights(run.raw_model, f"checkpoint-{run.state.step}", run.output_dir)
    ckpt_state = trainer_state(run.optimizer, run.scheduler, run.scaler, run.state, run.info)
    if not run.info.is_main:
        return None
    return save_checkpoint(run.output_dir, run.state.step, run.raw_model, run.tokenizer, run.training_args,
                           ckpt_state, keep=run.cfg.save_total_limit, results=_results(run))


def _results(run: Run) -> dict:
    """What a model card can tell about the weights of the current step."""
    step = run.state.step
    return {"step": step, "valid_ppl": run.evaluated_ppl if run.evaluated_step == step else None}


# ---------------------------------------------------------------- finish


def finish(run: Run) -> TrainResult:
    """Score and save the last step, publish final/, and report. After a signal: only say how to resume."""
    st, info, cfg = run.state, run.info, run.cfg
    run.bar.close()
    if run.exit_code:
        run.log.close()
        if info.is_main:  # on stderr, which `| tee` leaves on the terminal; said after the save
            print(f"stopped at step {st.step}; checkpoint saved. Resume with the same command plus "
                  f"--resume auto (or --resume {run.output_dir / ('checkpoint-' + str(st.step))})",
                  file=sys.stderr)
        return TrainResult(st.step, run.exit_code, None, run.output_dir, run.raw_model)
    if run.valid_set is not None and run.evaluated_step != st.step:
        validate(run)  # stopped mid-epoch by --max-steps: the final model still gets a score
    save(run)
    best_ppl = math.exp(st.best_loss) if st.best_loss is not None else None
    if info.is_main:
        publish_model(run.output_dir / "final", run.raw_model, run.tokenizer, run.training_args,
                      _results(run))
        if cfg.eval_generate:
            replies = _evaluate_replies(run)
            write_model_card(run.output_dir / "final", run.raw_model, run.training_args,
                             dict(_results(run), eval_generate=replies))
    run.log.close()
    if info.is_main and not cfg.quiet:
        print_table("training finished", [
            ("steps", st.step), ("epochs completed", st.epoch),
            ("time", f"{time.perf_counter() - run.started:.0f} s"), ("stopped because", run.stop_reason),
            ("best valid perplexity", f"{best_ppl:.2f}" if best_ppl else "no validation data"),
            ("final model", str(run.output_dir / "final")),
            ("best model", str(run.output_dir / "best") if best_ppl else "-"),
            ("chat with it", f"chatbot-chat --model {run.output_dir / ('best' if best_ppl else 'final')}"),
        ])
    return TrainResult(st.step, 0, best_ppl, run.output_dir, run.raw_model)


def _evaluate_replies(run: Run) -> dict:
    """--eval-generate: reply metrics of the final model, logged, shown (unless quiet) and returned."""
    generated = evaluate_trained_replies(run.raw_model, run.tokenizer, run.training_args, run.valid_set,
                                         n=run.cfg.eval_generate, seed=run.cfg.seed)
    run.log.write({"step": run.state.step, "eval_generate": generated.metrics})
    if not run.cfg.quiet:
        report = EvalReport(model=str(run.output_dir / "final"), data="validation set",
                            examples=len(generated.samples), loss_on=run.cfg.loss_on, perplexity=None,
                            generation={"sampled": generated})
        print_eval_report(report, examples=3)
    return generated.metrics
