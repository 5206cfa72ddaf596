"""Build GPT-2 models and read/write self-describing model folders.

A model folder (what `chatbot-train` writes as `final/`, `best/` and each `checkpoint-N/`) holds
`config.json` + `model.safetensors` (`save_pretrained`), the tokenizer files (`tokenizer.json`,
`tokenizer_config.json`, `vocab.txt`) and `training_args.json`. Plain transformers loads it with
`GPT2LMHeadModel.from_pretrained(dir)` and `BertTokenizerFast.from_pretrained(dir)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from chatbot.precision import prepare_model, resolve_dtype
from chatbot.tokenization import load_tokenizer

# transformers' own bars ("Loading weights", "Writing model shards") would interleave with ours
# on every save and load.
hf_logging.disable_progress_bar()

TRAINING_ARGS = "training_args.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_gpt2_config(path: str | Path, tokenizer: BertTokenizerFast) -> GPT2Config:
    """Read a GPT2Config JSON and tie its vocabulary and special ids to `tokenizer`.

    `vocab_size` always comes from the tokenizer, and bos/eos/pad are [CLS]/[SEP]/[PAD]
    (GPT2Config would otherwise default bos/eos to 50256, outside a Chinese vocabulary).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a JSON object of GPT2Config fields.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path} (see configs/ for examples)")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid JSON model config: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} must hold a JSON object of GPT2Config fields, got {type(fields).__name__}")
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}  # "_comment" keys document the file
    fields.update(vocab_size=len(tokenizer), **special_ids(tokenizer))
    config = GPT2Config(**fields)
    if config.n_embd % config.n_head:
        raise ValueError(f"{path}: n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    return config


def special_ids(tokenizer: BertTokenizerFast) -> dict[str, int]:
    return {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def build_model(config: GPT2Config) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 using PyTorch's fused scaled-dot-product attention."""
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def check_model_dir(path: str | Path, *, need_tokenizer: bool = True) -> Path:
    """Check that `path` is a model folder and say exactly what is missing if not.

    Raises:
        FileNotFoundError: naming the folder, the missing files and how to make a model.
    """
    path = Path(path)
    hint = ("Train one with `chatbot-train` (it writes model/final), or pass --model/--pretrained "
            "with a folder written by `save_pretrained`.")
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}. {hint}")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if need_tokenizer and not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise FileNotFoundError(f"{path} is not a complete model folder: missing {', '.join(missing)}. {hint}")
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: str = "fp32") -> tuple[GPT2LMHeadModel, BertTokenizerFast, dict]:
    """Load (model in eval mode, tokenizer, training_args) from a model folder.

    `dtype` is one of `chatbot.options.DTYPES`, resolved for `device` by
    `chatbot.precision.resolve_dtype`. `training_args` is `{}` for folders not written by chatbot-train (e.g. a
    downloaded GPT-2).

    Raises:
        FileNotFoundError: if the folder is incomplete (see `check_model_dir`).
        ValueError: if the tokenizer and the model's embedding disagree in size, or for a
            dtype the device cannot run.
    """
    path = check_model_dir(path)
    device = torch.device(device)
    precision = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(path)
    model = GPT2LMHeadModel.from_pretrained(str(path), attn_implementation="sdpa", dtype=torch.float32)
    check_vocab_fits(model, tokenizer, where=str(path))
    args_file = path / TRAINING_ARGS
    training_args = json.loads(args_file.read_text(encoding="utf-8")) if args_file.is_file() else {}
    # Converted on the CPU, then moved: a GPU never holds the fp32 copy.
    return prepare_model(model.eval(), precision).to(device), tokenizer, training_args


def context_limit(model: GPT2LMHeadModel, training_args: dict) -> int:
    """Tokens the model can be given: n_positions, or less if it was trained on shorter examples
    (position embeddings past the training max_len were never trained)."""
    n_positions = model.config.n_positions
    return min(n_positions, training_args.get("max_len") or n_positions)


def check_vocab_fits(model: GPT2LMHeadModel, tokenizer: BertTokenizerFast, *, where: str) -> None:
    """Raise if the tokenizer can produce ids outside the model's embedding table.

    Raises:
        ValueError: with both sizes and the fix.
    """
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{n_embed} rows. Use the tokenizer the model was trained with, or pass "
            "--resize-embeddings to grow the embedding (new rows start random).")


def save_model(path: str | Path, model: GPT2LMHeadModel, tokenizer: BertTokenizerFast,
               training_args: dict) -> Path:
    """Write a self-describing model folder (weights, config, tokenizer files, training args)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    # transformers 5 writes only tokenizer.json; vocab.txt keeps the folder usable by tools that
    # read a plain BERT vocabulary (GPT2-chitchat's scripts, older transformers).
    vocab = tokenizer.get_vocab()
    (path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.__getitem__)) + "\n", encoding="utf-8")
    (path / TRAINING_ARGS).write_text(json.dumps(training_args, ensure_ascii=False, indent=2), encoding="utf-8")
    return path
