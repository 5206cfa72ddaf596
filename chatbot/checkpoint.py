"""Training checkpoints: written atomically, found again for --resume, pruned to a limit.

A checkpoint is a model folder (see chatbot.modeling) plus `trainer_state.pt`: optimizer,
scheduler and scaler states, every RNG state, and the position in training (step, epoch,
batches done in that epoch), which is what an exact resume needs.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from chatbot.fileio import atomic_dir
from chatbot.modeling import check_model_dir, save_model

STATE_FILE = "trainer_state.pt"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(output_dir: Path, step: int, model, tokenizer, training_args: dict, state: dict,
                    keep: int = 0, results: dict | None = None) -> Path:
    """Write `output_dir/checkpoint-<step>` under a temporary name, then rename it into place.

    A crash at any moment leaves either the previous checkpoints or a complete new one, never a
    half-written `checkpoint-*` (see `atomic_dir`).
    `keep` > 0 prunes all but the newest `keep` checkpoints afterwards; `results` go to the model card.
    """
    final = output_dir / f"checkpoint-{step}"
    with atomic_dir(final) as tmp:
        save_model(tmp, model, tokenizer, training_args, results)
        torch.save(state, tmp / STATE_FILE)
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := _CHECKPOINT.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint folder to resume from: `auto` is the newest in output_dir (or none).

    Raises:
        FileNotFoundError: if a given folder is not a checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        found = ", ".join(p.name for p in list_checkpoints(path)) if path.is_dir() else ""
        hint = f" It holds {found}: pass one of those." if found else " Pass a checkpoint-N folder or --resume auto."
        raise FileNotFoundError(f"{path} is not a training checkpoint (no {STATE_FILE}).{hint}")
    check_model_dir(path)
    return path


def load_state(path: Path) -> dict:
    # Our own file: it holds numpy RNG state and optimizer tensors, not only plain tensors.
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def publish_model(path: Path, model, tokenizer, training_args: dict, results: dict | None = None) -> None:
    """Write a loadable model folder (best/, final/) under a temporary name and swap it in."""
    with atomic_dir(path) as tmp:
        save_model(tmp, model, tokenizer, training_args, results)
