"""Training checkpoints: written atomically, found again for --resume, pruned to a limit; and the
seeding and state an exact resume depends on (`seed_everything`, `TrainState`, every RNG state).

A checkpoint is a model folder (see chatbot.model.modeling) plus `trainer_state.pt`: optimizer,
scheduler and scaler states, every RNG state, and the position in training (step, epoch,
batches done in that epoch), which is what an exact resume needs. A LoRA run's checkpoint holds
the adapter alone (a LoRA adapter folder, see chatbot.model.lora) and the optimizer state of the
adapters; its frozen base is the model its adapter_config.json names (for a run from a config,
the run's own `base/`), checked against the SHA-256 recorded when training started.

`trainer_state.pt` holds only tensors and plain containers (dicts, lists, numbers, strings) and
is read with `torch.load(weights_only=True)`: resuming a checkpoint someone sent you can never run
code hidden in it. RNG states are stored in that plain form (see `rng_states`).
"""

from __future__ import annotations

import math
import pickle
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from chatbot.distributed import DistInfo, main_process_first
from chatbot.fileio import check_output_dir, clear_outputs, recover_stale_in, remove_dir, stale_target
from chatbot.fileio import atomic_dir as _atomic_dir
from chatbot.model.lora import ADAPTER_CONFIG, LoraSettings, is_lora_model
from chatbot.model.modeling import (
    TRAINING_ARGS,
    check_model_dir,
    first_line,
    nonfinite_parameters,
    read_training_args,
    save_adapter_folder,
    save_model,
)
from chatbot.model.weights import verify_checksums

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 2  # 1: pickled numpy RNG state (never loaded again); 2: tensors and plain containers only
_STATE_KEYS = ("optimizer", "scheduler", "scaler", "progress", "rng")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# What a run writes besides checkpoint-N; base/: the frozen random weights a LoRA run from a config adapts.
_RUN_FILES = ("metrics.jsonl", "runs", "best", "final", "base")


class NonFiniteError(ValueError):
    """Training produced NaN or infinite values; nothing non-finite is saved or published."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint, so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    micro_in_epoch: int = 0  # micro-batches done in the current epoch
    best_loss: float | None = None  # best validation loss so far
    bad_evals: int = 0  # validations since the best one


def rng_states() -> dict:
    """Every RNG state as tensors and plain values, so that `weights_only` loading accepts them."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {"python": [version, list(internal), gauss_next], "torch": torch.get_rng_state(),
              "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's RNGs (torch's on every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gather_rng_states(info: DistInfo) -> list[dict]:
    """Every rank's `rng_states`, in rank order, so each rank resumes its own dropout stream.

    A collective under DDP: every rank calls it.
    """
    mine = rng_states()
    if not info.enabled:
        return [mine]
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def trainer_state(optimizer, scheduler, scaler, progress: TrainState, info: DistInfo) -> dict:
    """What a checkpoint keeps beside the weights (`STATE_FILE`, holding `_STATE_KEYS`).

    Every rank calls it: the RNG states are gathered from all of them (see `gather_rng_states`).
    """
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "progress": asdict(progress), "rng": gather_rng_states(info)}


def restore_trainer_state(path: Path, optimizer, scheduler, scaler, *, rank: int) -> TrainState:
    """Load checkpoint `path`'s `trainer_state` back into these objects and this rank's RNGs.

    Returns:
        Where training stood when it was saved.
    """
    saved = load_state(path)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    # Resumed on more processes than saved it, the extra ranks continue the last rank's stream.
    restore_rng_states(saved["rng"][min(rank, len(saved["rng"]) - 1)])
    return TrainState(**saved["progress"])


def warn_changed_args(resume_dir: Path, current: dict) -> None:
    """Print which settings that decide the batches and the loss differ from the checkpoint's run."""
    saved = read_training_args(resume_dir)
    keys = ("train", "batch_size", "grad_accum", "seed", "max_len", "loss_on", "reverse", "speaker_ids", "lr")
    changed = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if changed:
        print(f"warning: resuming {resume_dir} with changed settings ({'; '.join(changed)}); "
              "the run will not match an uninterrupted one")


def check_lora_resume(resume_dir: Path, settings: LoraSettings | None) -> None:
    """A checkpoint resumes only with the LoRA settings (or none) it was trained with: other ranks or
    layers would not fit its adapters and optimizer state.

    Raises:
        ValueError: naming both settings and the flags that resume it.
    """
    saved = LoraSettings.recorded_in(read_training_args(resume_dir))
    if saved == settings:
        return
    had = f"LoRA ({saved.describe()})" if saved else "all weights (no LoRA)"
    asked = f"LoRA ({settings.describe()})" if settings else "all weights (no --lora-r)"
    how = f"the same flags: {saved.flags()}" if saved else "no --lora-* flags"
    raise ValueError(f"{resume_dir} was trained on {had}, but this run asks for {asked}: resume it with "
                     f"{how}; or start a new run from its weights with --pretrained {resume_dir} and "
                     "--output-dir NEW")


def atomic_model_dir(path: Path):
    """`atomic_dir` for a model folder (or a LoRA checkpoint's adapter folder): an existing one is
    replaced only if chatbot wrote it."""
    return _atomic_dir(path, is_ours=lambda p: (p / TRAINING_ARGS).is_file() and (
        (p / "config.json").is_file() or (p / ADAPTER_CONFIG).is_file()))


def save_checkpoint(output_dir: Path, step: int, model, tokenizer, training_args: dict, state: dict,
                    keep: int = 0, results: dict | None = None) -> Path:
    """Write `output_dir/checkpoint-<step>` under a temporary name, then rename it into place.

    A crash at any moment leaves either the previous checkpoints or a complete new one, never a
    half-written `checkpoint-*` (see `chatbot.fileio.atomic_dir`).
    `keep` > 0 prunes all but the newest `keep` checkpoints afterwards; `results` go to the model card.

    Raises:
        NonFiniteError: if a weight is NaN or infinite (nothing is written).
    """
    check_finite_weights(model, f"checkpoint-{step}", output_dir)
    final = output_dir / f"checkpoint-{step}"
    with atomic_model_dir(final) as tmp:
        if is_lora_model(model):  # the adapter alone: the frozen base is found again from it
            save_adapter_folder(tmp, model, tokenizer, training_args)
        else:
            save_model(tmp, model, tokenizer, training_args, results)
        torch.save({"format": STATE_FORMAT, **state}, tmp / STATE_FILE)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            remove_dir(old)
    return final


def publish_model(path: Path, model, tokenizer, training_args: dict, results: dict | None = None) -> None:
    """Write a loadable model folder (best/, final/) under a temporary name and swap it in.

    Raises:
        NonFiniteError: if a weight is NaN or infinite (the previous folder stays).
    """
    check_finite_weights(model, path.name, path.parent)
    with atomic_model_dir(path) as tmp:
        save_model(tmp, model, tokenizer, training_args, results)


def check_finite_weights(model, what: str, output_dir: Path) -> None:
    """Raise NonFiniteError if any parameter holds NaN or inf."""
    bad = nonfinite_parameters(model)
    if bad:
        raise NonFiniteError(f"training diverged: {len(bad)} weight tensors hold NaN or inf "
                             f"(first: {bad[0]}); {what} was not written. {_restart_hint(output_dir)}")


def check_finite_loss(loss: float, step: int, since_step: int, output_dir: Path) -> None:
    """Stop training at the first logged non-finite loss, naming the steps and the last good checkpoint."""
    if not math.isfinite(loss):
        steps = f"step {step}" if since_step >= step else f"one of steps {since_step}-{step}"
        raise NonFiniteError(f"the training loss became {loss} at {steps}; stopped without saving or "
                             f"publishing these weights. {_restart_hint(output_dir)}")


def _restart_hint(output_dir: Path) -> str:
    good = list_checkpoints(output_dir)
    if good:  # every checkpoint passed check_finite_weights when it was saved
        return (f"The last good checkpoint is {good[-1]}: resume from it with --resume {good[-1]} and "
                "a lower --lr (or more --warmup-steps).")
    return "No checkpoint was saved before: start again with a lower --lr (or more --warmup-steps)."


def open_output_dir(output_dir: str | Path, *, resume: str | None, overwrite: bool,
                    info: DistInfo) -> tuple[Path, Path | None]:
    """`prepare_output_dir`, then `resolve_resume`: (--output-dir, the checkpoint to resume from or None).

    Rank 0 prepares first: only once it has repaired what a killed save left (put a `.checkpoint-N.old`
    back under its name, say) do the other ranks look for the newest checkpoint. Looking meanwhile, they
    could pick an older one than rank 0 and train from another step.
    """
    with main_process_first(info):
        path = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite, is_main=info.is_main)
    return path, resolve_resume(resume, path, quiet=not info.is_main)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders holding a trainer state, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := _CHECKPOINT.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: Path, *, quiet: bool = False) -> Path | None:
    """The checkpoint folder to resume from: `auto` is the newest readable one in output_dir (or none).

    `auto` skips, and names, a newest checkpoint that is incomplete or unreadable.

    Raises:
        FileNotFoundError / ValueError: if a given folder is not a readable checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        checkpoints = list_checkpoints(output_dir)
        for path in reversed(checkpoints):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            if not quiet:
                print(f"warning: skipping {path}: {problem}", file=sys.stderr)
        if checkpoints and not quiet:
            print(f"warning: no readable checkpoint in {output_dir}: training starts from the beginning",
                  file=sys.stderr)
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        found = ", ".join(p.name for p in list_checkpoints(path)) if path.is_dir() else ""
        hint = (f" It holds {found}: pass one of those." if found
                else " Pass a checkpoint-N folder or --resume auto.")
        raise FileNotFoundError(f"{path} is not a training checkpoint (no {STATE_FILE}).{hint}")
    check_model_dir(path)
    problem = checkpoint_problem(path)
    if problem:
        raise ValueError(f"cannot resume from {path}: {problem}")
    return path


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from (missing, truncated, damaged or unsafe files), or None if it can.

    Reads the safetensors header, hashes the weights against the SHA-256 recorded when they were
    saved (under a second at GPT-2's size), and maps the trainer state without copying it.
    """
    try:
        check_model_dir(path)
        for weights in path.glob("*.safetensors"):
            try:
                with safe_open(weights, "pt"):
                    pass
            except SafetensorError as e:
                return f"{weights.name} is damaged ({e})"
        verify_checksums(path)
        load_state(path, mmap=True)
    except (OSError, ValueError) as e:
        return str(e)
    return None


def load_state(path: Path, *, mmap: bool = False) -> dict:
    """The trainer state of checkpoint folder `path`, read without unpickling any object.

    Raises:
        ValueError: naming the file, if it is damaged, of an older format, or holds objects.
    """
    file = path / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # torch names the class a payload wanted ("Unsupported global")
            raise ValueError(f"{file} is damaged (not a file torch.save wrote)") from None
        raise ValueError(
            f"{file} holds Python objects, not only tensors (an older chatbot's checkpoint, or a crafted "
            "file), and is not loaded: unpickling it could run code. Start a new run from its weights "
            f"instead: --pretrained {path} (the optimizer state starts afresh)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{file} is damaged, truncated or unreadable ({first_line(e)})") from None
    found = state.get("format") if isinstance(state, dict) else "?"
    if found != STATE_FORMAT or any(k not in state for k in _STATE_KEYS):
        raise ValueError(f"{file} is not a trainer state this chatbot version wrote (format {found}, "
                         f"expected {STATE_FORMAT}); start from its weights with --pretrained {path}")
    return state


def is_training_name(name: str) -> bool:
    """True for the entries a training run writes into --output-dir (and their temporary names)."""
    name = stale_target(name) or name
    return name in _RUN_FILES or _CHECKPOINT.fullmatch(name) is not None


def _foreign_entries(folder: Path) -> list[str]:
    """What in `folder` a training run never writes: the user's files, which nothing here touches."""
    return sorted(entry.name for entry in folder.iterdir() if not is_training_name(entry.name))


def _is_training_output(folder: Path) -> bool:
    """A previous run: it holds a checkpoint of ours, or nothing but names a run writes.

    A checkpoint (`checkpoint-N/trainer_state.pt`) is what marks a run; the user's own files beside one
    (notes, a plot) do not stop it being continued or replaced, and are never touched. Without one, the
    names alone must all be ours: `runs/` or `metrics.jsonl` could be another tool's.
    """
    return bool(list_checkpoints(folder)) or not _foreign_entries(folder)


def prepare_output_dir(output_dir: str | Path, *, resume: str | None, overwrite: bool, is_main: bool) -> Path:
    """Check --output-dir before any work: new, empty, or a previous training output (continued with
    --resume, replaced with --overwrite). On the main process, clean what a killed save left and,
    with --overwrite, remove the previous run's entries (only those: the user's files stay).

    Raises:
        ValueError: for a file, a folder holding anything else, or a previous output without a flag.
        OSError: if it is not writable.
    """
    path = Path(output_dir)
    foreign = _foreign_entries(path) if path.is_dir() else []
    if foreign and not _is_training_output(path) and len(foreign) < len(list(path.iterdir())):
        # Part ours by name, but no checkpoint: check_output_dir would list our names among the user's.
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(f"--output-dir {output_dir} holds {listed}, which training does not write, and no "
                         "checkpoint: it is not a previous training run, and nothing in it is replaced. "
                         f"Move {listed} elsewhere, or name a new or empty folder.")
    path = check_output_dir(path, is_ours=_is_training_output, overwrite=overwrite or resume is not None,
                            what="training output", flag="--output-dir",
                            how_to_replace="pass --resume auto to continue it or --overwrite to start afresh")
    if is_main and path.is_dir():
        for name in recover_stale_in(path, is_training_name):
            print(f"cleaned {path / name}, left by a run killed while saving", file=sys.stderr)
        if overwrite:
            clear_outputs(path, is_training_name)
            for name in foreign:
                print(f"kept {path / name}: training did not write it, so --overwrite leaves it",
                      file=sys.stderr)
    return Path(output_dir)
