"""LoRA: low-rank adapters on a frozen GPT-2 or OpenAI GPT, through peft; the one module that imports it.

    model = apply_lora(model, LoraSettings.of(r=8), base="uer/gpt2-chinese-cluecorpussmall")
    ... train: only the adapters' weights require grad ...
    save_adapter(folder, model)                 # adapter_config.json + adapter_model.safetensors
    model.save_pretrained(dir, state_dict=merged_state_dict(model))   # a plain model folder

The model stays the transformers model it was (peft injects its layers in place, as
`inject_adapter_in_model` does), so the loss, validation and generation code use it unchanged.
An adapter folder is what `PeftModel.save_pretrained` writes, loadable by
`PeftModel.from_pretrained(base, folder)`; `merge_adapter` loads one onto its base and merges it.

peft is imported only when a function here needs it (`chatbot-train --help` and runs without LoRA
never pay for it); without it, one error says what to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"  # the adapter inside a merged model folder (final/adapter, best/adapter)
DEFAULT_TARGETS = ("c_attn",)  # the attention's q/k/v projection, in GPT-2 and in OpenAI GPT alike
_ADAPTER = "default"  # peft's name for a model's one adapter
# PeftModel.save_pretrained names the tensors from the PeftModel down; ours are from the transformers model.
_PEFT_PREFIX = "base_model.model."
INSTALL_HINT = "pip install 'chatbot-zh[lora]'"


@dataclass(frozen=True)
class LoraSettings:
    """What LoRA adds to a model: rank, scale (the update is alpha / r · B A), dropout and where."""

    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @classmethod
    def of(cls, r: int | None, alpha: float | None = None, dropout: float | None = None,
           targets: str | tuple[str, ...] | None = None) -> LoraSettings | None:
        """The settings `chatbot-train --lora-*` give, with their defaults (alpha = 2 r, dropout 0.05,
        c_attn); None without a rank (LoRA off). `targets` may be comma-separated."""
        if r is None:
            return None
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        return cls(r=r, alpha=float(alpha if alpha is not None else 2 * r),
                   dropout=0.05 if dropout is None else float(dropout),
                   targets=tuple(targets or DEFAULT_TARGETS))

    @classmethod
    def recorded_in(cls, training_args: dict) -> LoraSettings | None:
        """The settings a run recorded in its training_args.json (None: trained without LoRA)."""
        return cls.of(training_args.get("lora_r"), training_args.get("lora_alpha"),
                      training_args.get("lora_dropout"), training_args.get("lora_targets"))

    def flags(self) -> str:
        return (f"--lora-r {self.r} --lora-alpha {self.alpha:g} --lora-dropout {self.dropout:g} "
                f"--lora-targets {','.join(self.targets)}")

    def describe(self) -> str:
        return f"r {self.r}, alpha {self.alpha:g}, dropout {self.dropout:g} on {', '.join(self.targets)}"


def _peft(needed_for: str):
    """The peft module, or one error naming what needed it and how to install it."""
    try:
        import peft
    except ImportError:
        raise ValueError(f"{needed_for} needs the peft package, which is not installed: "
                         f"{INSTALL_HINT}") from None
    return peft


def is_adapter_folder(path: str | Path) -> bool:
    """A bare LoRA adapter folder (adapter_config.json, no config.json of a whole model)."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def is_lora_model(model) -> bool:
    """True for a model `apply_lora` gave adapters to."""
    return hasattr(model, "peft_config")


def target_names(model) -> list[str]:
    """The layer names LoRA can adapt in this model's blocks (GPT-2 and OpenAI GPT: c_attn, c_fc, c_proj).

    Not lm_head: it shares its weight with the input embedding, which a merged adapter would untie.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.transformer.h.named_modules()
                   if isinstance(module, (Conv1D, torch.nn.Linear))})


def apply_lora(model, settings: LoraSettings, *, base: str):
    """Freeze `model` and add LoRA adapters to its `settings.targets` layers, in place.

    Args:
        base: the base model's folder or Hub id, recorded in adapter_config.json
            (`base_model_name_or_path`) for whoever loads the adapter alone.

    Returns:
        The same model: only the adapters' weights require grad.

    Raises:
        ValueError: naming targets the model does not have, and the ones it has.
    """
    valid = target_names(model)
    unknown = [t for t in settings.targets if t not in valid]
    if unknown:
        raise ValueError(f"--lora-targets {','.join(settings.targets)}: {model.config.model_type} has no "
                         f"{', '.join(unknown)} layers; its blocks have {', '.join(valid)} (c_attn: "
                         "attention q/k/v, c_proj: attention and MLP outputs, c_fc: MLP input); e.g. "
                         "--lora-targets c_attn,c_proj")
    peft = _peft("--lora-r")
    # GPT-2's and OpenAI GPT's Conv1D layers store their weight as (in, out): peft must transpose.
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=list(settings.targets), fan_in_fan_out=True,
                             base_model_name_or_path=base, task_type="CAUSAL_LM")
    return peft.inject_adapter_in_model(config, model, adapter_name=_ADAPTER)


def adapter_base(model) -> str:
    """The base model's folder or Hub id that `apply_lora` recorded."""
    return model.peft_config[_ADAPTER].base_model_name_or_path


def save_adapter(path: Path, model) -> None:
    """Write the adapter as `PeftModel.save_pretrained` does: `ADAPTER_CONFIG` and `ADAPTER_WEIGHTS`."""
    peft = _peft("saving a LoRA adapter")
    from safetensors.torch import save_file

    state = peft.get_peft_model_state_dict(model, adapter_name=_ADAPTER)
    save_file({_PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()},
              path / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    model.peft_config[_ADAPTER].save_pretrained(str(path))


def load_adapter_weights(model, path: Path) -> None:
    """Put the weights of adapter folder `path` into a model `apply_lora` gave the same settings, exactly.

    Raises:
        ValueError: if the folder's tensors are not those adapters'.
    """
    peft = _peft(f"{path} (a LoRA adapter)")
    from safetensors.torch import load_file

    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in load_file(path / ADAPTER_WEIGHTS).items()}
    result = peft.set_peft_model_state_dict(model, state, adapter_name=_ADAPTER)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path / ADAPTER_WEIGHTS} does not hold the adapters its {ADAPTER_CONFIG} "
                         f"describes ({len(missing)} missing, {len(result.unexpected_keys)} unexpected "
                         "tensors); copy the folder again, or use another checkpoint")


def merged_state_dict(model) -> dict:
    """The weights of the model with its adapters merged (W + alpha / r · B A), named as in the plain model.

    The same numbers as peft's `merge_and_unload`, without touching the model being trained: only the
    adapted layers' weights are new tensors, the rest are the model's own.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    state = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
             if ".lora_" not in name}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                state[f"{name}.weight"] = module.base_layer.weight + module.get_delta_weight(_ADAPTER)
    return state


def merge_adapter(model, path: Path):
    """`model` (the base) with the LoRA adapter of folder `path` loaded and merged in: a plain model again.

    peft's tuner directly, not `PeftModel.from_pretrained`: that one reads transformers'
    `is_gradient_checkpointing`, which transformers 5.24 deprecates.

    Raises:
        ValueError: for an adapter of another kind than LoRA, or one that does not fit this base.
    """
    peft = _peft(f"{path} is a LoRA adapter folder: loading it")
    config = peft.PeftConfig.from_pretrained(str(path))
    if config.peft_type != peft.PeftType.LORA:
        raise ValueError(f"{path / ADAPTER_CONFIG}: peft_type is {config.peft_type}; chatbot loads LoRA "
                         "adapters only")
    try:
        tuner = peft.LoraModel(model, config, _ADAPTER)
        load_adapter_weights(model, path)
    except (ValueError, RuntimeError, KeyError) as e:
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"{path}: the LoRA adapter does not fit its base model ({reason}); is "
                         f"{ADAPTER_CONFIG}'s base_model_name_or_path the model it was trained on?") from None
    # The tuner froze the base for training the adapter; merged, it is a model like any loaded one.
    return tuner.merge_and_unload().requires_grad_(True)
