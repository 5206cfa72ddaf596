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
from safetensors import SafetensorError
from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

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
    fields = read_json_object(path, "model config", "of GPT2Config fields")
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}  # "_comment" keys document the file
    fields.update(vocab_size=len(tokenizer), **special_ids(tokenizer))
    try:
        config = GPT2Config(**fields)
    except Exception as e:  # noqa: BLE001 - transformers 5 raises its own StrictDataclassFieldValidationError
        raise ValueError(f"{path}: {' '.join(str(e).split())}") from None
    check_gpt2_config(config, path)
    return config


_POSITIVE_INTS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
_PROBABILITIES = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def check_gpt2_config(config: GPT2Config, where: str | Path) -> None:
    """Check the fields a model is built from, so that a bad value is named, not a crash deep in torch.

    Raises:
        ValueError: naming the file, the field, its value and what is allowed.
    """
    for name in _POSITIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    if config.n_inner is not None and (not isinstance(config.n_inner, int) or config.n_inner < 1):
        raise ValueError(f"{where}: n_inner must be a positive integer or null, got {config.n_inner!r}")
    for name in _PROBABILITIES:
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{where}: {name} must be a number in [0, 1], got {value!r}")
    if config.n_embd % config.n_head:
        raise ValueError(f"{where}: n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")


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
               dtype: torch.dtype | None = None) -> tuple[GPT2LMHeadModel, BertTokenizerFast, dict]:
    """Load (model in eval mode, tokenizer, training_args) from a model folder.

    `training_args` is `{}` for folders not written by chatbot-train (e.g. a downloaded GPT-2).

    Raises:
        FileNotFoundError: if the folder is incomplete (see `check_model_dir`).
        ValueError: if a file is damaged, a weight is not finite, or the tokenizer and the model's
            embedding disagree in size.
    """
    path = check_model_dir(path)
    tokenizer = load_tokenizer(path)
    model = load_weights(path, dtype=dtype)
    bad = nonfinite_parameters(model)
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}); the run that wrote "
                         "it diverged. Use an earlier checkpoint-N or best/ folder.")
    check_vocab_fits(model, tokenizer, where=str(path))
    return model.to(device).eval(), tokenizer, read_training_args(path)


def load_weights(path: Path, dtype: torch.dtype | None = None) -> GPT2LMHeadModel:
    """`GPT2LMHeadModel.from_pretrained`, with a damaged config or weights file named in the error.

    Raises:
        ValueError: naming the file and the cause (malformed JSON, bad field, truncated weights).
    """
    config_file = path / "config.json"
    try:
        config = GPT2Config.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - malformed JSON, a wrong type (StrictDataclassFieldValidationError), ...
        raise ValueError(f"{config_file} is not a valid GPT-2 config ({' '.join(str(e).split())})") from None
    check_gpt2_config(config, config_file)
    weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), path)
    try:
        return GPT2LMHeadModel.from_pretrained(str(path), config=config, attn_implementation="sdpa", dtype=dtype)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
        raise ValueError(f"{weights} could not be read ({first_line(e)}); it may be truncated or damaged: "
                         "copy it again, or use another checkpoint") from None


def read_training_args(path: Path) -> dict:
    """training_args.json of a model folder, or {} for folders not written by chatbot-train."""
    file = path / TRAINING_ARGS
    return read_json_object(file, "training arguments file", "of training options") if file.is_file() else {}


def read_json_object(path: Path, what: str, holding: str) -> dict:
    """A JSON object read from `path`; a damaged file is named with the parser's reason.

    Raises:
        ValueError: if the file is not UTF-8 JSON or holds something other than an object.
    """
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid JSON {what}: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} must hold a JSON object {holding}, got {type(fields).__name__}")
    return fields


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN or inf (a diverged run)."""
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


def first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


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
