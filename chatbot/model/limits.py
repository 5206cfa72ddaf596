"""What a model config costs before anything is built: its parameter count, the memory that takes,
and a refusal naming the field when that memory is not there.

A config is a few numbers, and a typo in one (`"n_positions": 100000000`) asks for a model that
cannot exist: torch would allocate until the OOM killer ends the process, and a million layers
spin for half an hour before the first weight. `check_model_fits` does the arithmetic first.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The deepest public GPT models have about 100 layers (GPT-3 96, PaLM 118). Each layer is a Python
# module that takes ~2 ms and ~40 KB to build before its weights, so 10^6 layers would spin for half
# an hour: a cap, not a memory estimate, is what stops that.
MAX_LAYERS = 1024
FP32_BYTES = 4  # models are built and loaded in fp32 on the CPU, converted afterwards
TRAINING_BYTES = 16  # fp32 weights, their gradients and AdamW's two moments
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def count_parameters(config) -> int:
    """The parameters of a GPT-2 or OpenAI GPT built from `config`, counted from its fields alone.

    Exact for both (the LM head shares the token embedding unless `tie_word_embeddings` is off).
    """
    e, layers = config.n_embd, config.n_layer
    inner = getattr(config, "n_inner", None) or 4 * e
    # Per layer: query/key/value and output projections, the MLP's two, two layer norms.
    per_layer = 4 * e * e + 2 * e * inner + inner + 9 * e
    final_norm = 2 * e if config.model_type == "gpt2" else 0  # OpenAI GPT has none
    head = 0 if config.tie_word_embeddings else config.vocab_size * e
    return (config.vocab_size + config.n_positions) * e + layers * per_layer + final_norm + head


def available_memory() -> int | None:
    """Bytes this process can still allocate in RAM: MemAvailable, or less under a cgroup limit
    (a container's). None where the system does not say (not Linux): then nothing is refused."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    if "MemAvailable" not in fields:
        return None
    free = int(fields["MemAvailable"].split()[0]) * 1024
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            root = Path("/sys/fs/cgroup")
            headroom = int((root / limit).read_text()) - int((root / usage).read_text())
        except (OSError, ValueError):  # no such cgroup, or "max" (no limit)
            continue
        return min(free, max(headroom, 0))
    return free


def check_model_fits(config, where: str | Path, *, training: bool = False,
                     device: torch.device = torch.device("cpu"), dtype: str = "fp32") -> None:
    """Refuse a config whose model clearly cannot be built, run or trained here, before building it.

    Every model is first built in fp32 on the CPU (`FP32_BYTES` a parameter). Training also needs
    its gradients and AdamW's moments (`TRAINING_BYTES` a parameter) in RAM or on the GPU,
    whichever has more free; inference on a GPU needs the weights in `dtype` there. Activations
    come on top, so what passes may still not fit; what is refused cannot.

    Raises:
        ValueError: naming `where`, the field that makes the model large, what it implies, and
            the memory that is free.
    """
    if config.n_layer > MAX_LAYERS:
        raise ValueError(f"{where}: n_layer {config.n_layer} is more layers than chatbot builds (at most "
                         f"{MAX_LAYERS}; the deepest public GPT models have about 100): lower n_layer")
    n = count_parameters(config)
    ram = available_memory()
    needs = [("building it needs", n * FP32_BYTES, ram, "in RAM")]
    if training:
        gpu = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
        needs.append(("training it needs (weights, gradients and AdamW's two moments)", n * TRAINING_BYTES,
                      None if ram is None else max(ram, gpu), "in RAM or on the GPU"))
    elif device.type == "cuda":
        needs.append((f"running it in {dtype} needs", n * DTYPE_BYTES[dtype],
                      torch.cuda.mem_get_info(device)[0], f"on {device}"))
    for doing, need, free, place in needs:
        if free is not None and need > free:
            part, fix = _largest_part(config, n)
            raise ValueError(f"{where}: {part}; {doing} {_size(need)} but {_size(free)} is free {place}. "
                             f"{fix}")


def _largest_part(config, n: int) -> tuple[str, str]:
    """(which fields make most of the `n` parameters, how to shrink them)."""
    e = config.n_embd
    layers = n - (config.n_positions + config.vocab_size) * e
    count, fields, fix = max([
        (config.n_positions * e, f"n_positions {config.n_positions} × n_embd {e}",
         "Lower n_positions (GPT-2 has 1024; chatbot-train reads --max-len tokens, 256 by default)"),
        (config.vocab_size * e, f"vocab_size {config.vocab_size} × n_embd {e}",
         "Use a smaller vocabulary or a lower n_embd"),
        (layers, f"n_layer {config.n_layer} × n_embd {e} (about 12 × n_embd² a layer)",
         "Lower n_layer or n_embd (configs/base.json, GPT-2's size, has 12 × 768)"),
    ])
    return f"{fields} makes {_amount(count)} of the model's {_amount(n)} parameters", fix


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def _amount(n: int) -> str:
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million")):
        if n >= size:
            return f"{n / size:.1f} {word}"
    return f"{n:,}"
