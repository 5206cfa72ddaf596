"""Precision, training and inference: which dtype "auto" means where, and the inference conversions.

    autocast_dtype, use_scaler, name = resolve_precision("auto", device)   # training
    model = prepare_model(model, resolve_dtype("auto", device))            # inference

Training runs fp32 weights under bf16/fp16 autocast. Inference converts the weights: a reply is
one forward pass per token, and each pass reads every weight once; on a CPU the time goes into
streaming weights from memory, so fewer bytes per weight is what makes a reply faster. bf16
halves them (and the KV cache); int8 quarters the linear layers' and runs their matmuls on the
CPU's VNNI int8 instructions. `auto_dtype` is the one place that decides what "auto" means.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

from chatbot.model.kernels import can_pack, fuse_mlp_gelu, pack_linear_layers, use_decode_attention
from chatbot.options import DTYPES


def cpu_supports(dtype: str) -> bool:
    """Whether this CPU runs `dtype` natively: bf16 needs AVX512-BF16 or AMX, int8 needs VNNI
    and PyTorch's x86 quantized engine (fbgemm). Emulated, either is slower than fp32."""
    cpu = torch.cpu
    if dtype == "bf16":
        return cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    if dtype == "int8":
        return (cpu._is_vnni_supported() and "fbgemm" in torch.backends.quantized.supported_engines
                and importlib.util.find_spec("torch.ao.quantization") is not None)
    return dtype == "fp32"


def auto_dtype(device: torch.device, *, int8: bool) -> str:
    """What "auto" means on `device`: the fastest precision it runs natively.

    A GPU: bf16, or fp16 where bf16 is not supported. A CPU: int8 where it has VNNI (only with
    `int8`: training passes False, as dynamic quantization has no backward), else bf16 where it
    runs bf16 natively, else fp32 (see `cpu_supports`). Any other device: fp32.
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type != "cpu":
        return "fp32"
    candidates = ("int8", "bf16") if int8 else ("bf16",)
    return next((d for d in candidates if cpu_supports(d)), "fp32")


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The inference precision `dtype` means on `device`: "fp32", "bf16", "fp16" or "int8".

    `auto` is `auto_dtype(device, int8=True)` (the quality check in tests/test_precision.py holds
    int8 and bf16 to fp32's perplexity).

    Raises:
        ValueError: for an unknown name, or int8 asked for on a GPU.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device.type == "cuda" and dtype == "int8":
        raise ValueError("--dtype int8 is CPU-only (dynamic quantization); use --dtype bf16 on a GPU")
    return auto_dtype(device, int8=True) if dtype == "auto" else dtype


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool, str]:
    """The training precision `precision` means on `device`: (autocast dtype or None, use a GradScaler, name).

    `auto` is `auto_dtype(device, int8=False)`. On the bundled sample the bf16 loss curve stays
    within 0.01% of fp32's and the tiny config's step takes half the time (bench/RESULTS.md,
    bench/bench_precision_loss.py).

    Raises:
        ValueError: for fp16 asked for off a GPU.
    """
    if precision == "auto":
        precision = auto_dtype(device, int8=False)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return dtype, precision == "fp16", precision


def prepare_model(model: nn.Module, dtype: str, device: torch.device | str = "cpu") -> nn.Module:
    """Convert an eval-mode GPT-2 (in fp32, on the CPU) to `dtype` and move it to `device`; returns it.

    Every dtype but fp32 first turns GPT-2's `Conv1D` layers into `nn.Linear` (the same matmul
    with the weight transposed: x @ W + b = x @ W.T.T + b), because oneDNN's bf16 kernels are
    about twice as fast with the weight laid out as (out, in), and computes GELU in one fused
    kernel (see `fuse_gelu`). int8 then quantizes every linear layer (lm_head included) with
    per-channel weights; activations are quantized on the fly, per batch.
    On a CPU, fp32 and bf16 models get the kernels of `chatbot.model.kernels`: linear layers
    prepacked for oneDNN (fp32 too, which is why its layers become `nn.Linear` as well), the MLP's
    GELU computed inside its first layer and, for bf16, the decode attention. Elsewhere fp32
    leaves the model untouched.
    """
    device = torch.device(device)
    cpu_kernels = device.type == "cpu" and dtype in ("fp32", "bf16") and can_pack()
    if dtype != "fp32" or cpu_kernels:
        conv1d_to_linear(model)
        fuse_gelu(model)
    if dtype == "int8":
        model = quantize_int8(model)
    elif dtype in ("bf16", "fp16"):
        model = model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
    model = model.to(device)
    if cpu_kernels:
        fuse_mlp_gelu(pack_linear_layers(model))
        if dtype == "bf16" and model.config.model_type == "gpt2":
            use_decode_attention(model)
    return model


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every transformers `Conv1D` (weight (in, out)) by the `nn.Linear` computing the same."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, device=child.weight.device, dtype=child.weight.dtype)
                linear.weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
                linear.bias = nn.Parameter(child.bias.detach(), requires_grad=False)
                setattr(module, name, linear)
    return model


def fuse_gelu(model: nn.Module) -> nn.Module:
    """Replace transformers' `NewGELUActivation` (GPT-2's gelu_new) by `nn.GELU(approximate="tanh")`.

    Both compute 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))); transformers spells it as six
    tensor ops, each a pass over the (B, T, 4 x n_embd) activations, which took a quarter of a
    64-token int8 prefill at base size. PyTorch's kernel is one pass, computed in fp32 even for
    bf16 inputs. fp32 models off the CPU keep transformers' version, so their outputs do not move by
    a bit.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, nn.GELU(approximate="tanh"))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every `nn.Linear` with torch.ao's fbgemm kernels.

    torch.ao.quantization is deprecated in favour of torchao, but on CPU its fbgemm kernels are
    what makes int8 fast: torchao's CPU int8 paths (torch._weight_int8pack_mm) ran about as slowly
    as fp32 here. Its deprecation warnings are silenced; if a future PyTorch drops it, int8 fails
    with a message and `auto` picks bf16.
    """
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise ValueError("--dtype int8 needs torch.ao.quantization, which this PyTorch "
                         f"({torch.__version__}) lacks; use --dtype bf16") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
