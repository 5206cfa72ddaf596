"""Build GPT-2 models, load any supported checkpoint, and write self-describing model folders.

A model folder (what `chatbot-train` writes as `final/`, `best/` and each `checkpoint-N/`) holds
`config.json` + `model.safetensors` (`save_pretrained`), the tokenizer files (`tokenizer.json`,
`tokenizer_config.json`, `vocab.txt`) and `training_args.json`. Plain transformers loads it with
`GPT2LMHeadModel.from_pretrained(dir)` and `BertTokenizerFast.from_pretrained(dir)`.

`load_model` also reads the public Chinese checkpoints: uer's `gpt2-chinese-*` (GPT-2) and
CDial-GPT's LCCC models (OpenAI GPT, in their own dialogue layout), from a folder or a Hub id, and
bare LoRA adapter folders (see chatbot.model.lora), merged onto the base model they name.

A model trained with LoRA is saved as the merged model plus its adapter alone in `adapter/`; a
checkpoint of it holds only the adapter (`save_adapter_folder`).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel, OpenAIGPTLMHeadModel, PreTrainedModel
from transformers.utils import logging as hf_logging

from chatbot.model.hf_files import export_hf_files, write_model_card
from chatbot.layout import CDIAL, CDIAL_HEAD, CHITCHAT, LOSS_ON, speaker_token_ids
from chatbot.model.limits import check_model_fits
from chatbot.model.lora import (ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, LoraSettings, apply_lora,
                                is_adapter_folder, is_lora_model, load_adapter_weights,
                                merge_adapter, merged_state_dict, save_adapter)
from chatbot.model.precision import prepare_model, resolve_dtype
from chatbot.model.weights import (check_config_fits_weights, header_shapes, verify_checksums,
                                   verified_digests, write_checksums)
from chatbot.resources import resolve_config
from chatbot.tokenization import load_tokenizer, split_characters

# transformers' own bars ("Loading weights", "Writing model shards") would interleave with ours
# on every save and load.
hf_logging.disable_progress_bar()

TRAINING_ARGS = "training_args.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_CLASSES = {"gpt2": GPT2LMHeadModel, "openai-gpt": OpenAIGPTLMHeadModel}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, as on huggingface.co
_MODEL_HINT = ("Train one with `chatbot-train` (it writes model/best and model/final), or give a folder "
               "written by chatbot-train or `save_pretrained`, a LoRA adapter folder, or a Hugging Face Hub "
               "id (org/name).")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def load_gpt2_config(path: str | Path, tokenizer: BertTokenizerFast) -> GPT2Config:
    """Read a GPT2Config JSON and tie its vocabulary and special ids to `tokenizer`.

    `vocab_size` always comes from the tokenizer, and bos/eos/pad are [CLS]/[SEP]/[PAD]
    (GPT2Config would otherwise default bos/eos to 50256, outside a Chinese vocabulary).

    Raises:
        FileNotFoundError: if it is neither a bundled config's name nor a file.
        ValueError: if it is not a JSON object of GPT2Config fields.
    """
    path = resolve_config(path)
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
    OpenAI GPT configs have the same fields, less `n_inner`.

    Raises:
        ValueError: naming the file, the field, its value and what is allowed.
    """
    for name in _POSITIVE_INTS:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    n_inner = getattr(config, "n_inner", None)
    if n_inner is not None and (not isinstance(n_inner, int) or isinstance(n_inner, bool) or n_inner < 1):
        raise ValueError(f"{where}: n_inner must be a positive integer or null, got {n_inner!r}")
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


def model_to_train(*, resume_dir: Path | None, pretrained: str | None, config: str, vocab: str,
                   resize_embeddings: bool = False) -> tuple[PreTrainedModel, BertTokenizerFast, str, str]:
    """(model, tokenizer, where it came from, its dialogue layout) for training: a checkpoint to resume
    (a LoRA one: its frozen base with the adapters trained so far), a pretrained folder or Hub id (see
    `load_model`), or a config with random weights.

    Raises:
        ValueError: also for a model that cannot be trained in this machine's memory (see
            `chatbot.model.limits.check_model_fits`), before it is built.
    """
    if resume_dir is not None and is_adapter_folder(resume_dir):
        return _lora_checkpoint_to_train(resume_dir)
    source = resume_dir or pretrained
    if source is None:
        tokenizer = load_tokenizer(vocab)
        model_config = load_gpt2_config(config, tokenizer)
        check_model_fits(model_config, resolve_config(config), training=True)
        return build_model(model_config), tokenizer, f"{config} (random init)", CHITCHAT
    model, tokenizer, saved_args = load_model(source, resize_embeddings=resize_embeddings, training=True)
    return model, tokenizer, str(source), dialogue_layout(model.config.model_type, tokenizer, saved_args)


def _lora_checkpoint_to_train(resume_dir: Path) -> tuple[PreTrainedModel, BertTokenizerFast, str, str]:
    """A LoRA checkpoint to resume: its base model, given the adapters it was trained with, their weights
    loaded exactly (no merge: the base stays frozen as it was)."""
    training_args = read_training_args(resume_dir)
    settings = LoraSettings.recorded_in(training_args)
    if settings is None:
        raise ValueError(f"{resume_dir / TRAINING_ARGS} has no lora_r, but the folder holds a LoRA adapter: "
                         "put back the training_args.json chatbot-train wrote")
    base = read_adapter_base(resume_dir)
    model, _, _ = load_model(base, training=True)
    check_base_unchanged(resume_dir, base, training_args)
    apply_lora(model, settings, base=base)
    load_adapter_weights(model, resume_dir)
    kind = model.config.model_type
    _, tokenizer, _ = _read_model_dir(resume_dir, where=str(resume_dir), kind=kind)
    return model, tokenizer, str(resume_dir), dialogue_layout(kind, tokenizer, training_args)


def model_reference(source: str | Path) -> str:
    """How a LoRA adapter names its base model: a local folder by its absolute path (it resolves from
    anywhere), a Hub id as given."""
    text = str(source)
    return str(Path(text).resolve()) if Path(text).exists() else text


def check_base_unchanged(adapter_dir: Path, base: str, training_args: dict) -> None:
    """Compare the base model's weights with the SHA-256 its adapter was trained on (`base_sha256`,
    recorded by chatbot-train; adapters from elsewhere have none to compare).

    Raises:
        ValueError: naming the base and the adapter, if the base's weights changed since.
    """
    recorded = training_args.get("base_sha256")
    # load_model(base) has just verified the base's weights against its own manifest.
    if recorded and verified_digests(resolve_model_dir(base)) != recorded:
        raise ValueError(f"the base model {base} is not the one the LoRA adapter {adapter_dir} was trained "
                         "on: its weights' SHA-256 differ from those recorded in training_args.json "
                         "(base_sha256). "
                         "Put back that base model (or point base_model_name_or_path in "
                         f"{adapter_dir / ADAPTER_CONFIG} at a copy of it)")


def check_model_dir(path: str | Path, *, need_tokenizer: bool = True) -> Path:
    """Check that `path` is a model folder (or a LoRA adapter folder) and say exactly what is missing if not.

    Raises:
        FileNotFoundError: naming the folder, the missing files and how to make a model.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}. {_MODEL_HINT}")
    if is_adapter_folder(path):  # its tokenizer may be the base model's
        missing = [] if (path / ADAPTER_WEIGHTS).is_file() else [ADAPTER_WEIGHTS]
    else:
        missing = [] if (path / "config.json").is_file() else ["config.json"]
        if not any((path / f).is_file() for f in _WEIGHT_FILES):
            missing.append("model.safetensors (or pytorch_model.bin)")
        if need_tokenizer and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise FileNotFoundError(f"{path} is not a complete model folder: missing {', '.join(missing)}. "
                                f"{_MODEL_HINT}")
    return path


def resolve_model_dir(source: str | Path) -> Path:
    """The local folder of `source`: a model folder, or a Hub id (`org/name`) whose files are
    fetched into the Hugging Face cache on first use, as `from_pretrained` does.

    Raises:
        FileNotFoundError: for a missing or incomplete folder, or a Hub id that cannot be had
            (offline without a cached copy, unknown, gated), in one line.
    """
    text = str(source)
    if Path(text).exists() or not _HUB_ID.fullmatch(text) or Path(text.split("/")[0]).exists():
        return check_model_dir(text)
    return check_model_dir(_download(text))


def _download(repo_id: str) -> Path:
    """Config, tokenizer files and weights (safetensors if there are, else pytorch_model.bin)."""
    from huggingface_hub import constants, errors, snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "vocab.txt", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            snapshot_download(repo_id, allow_patterns=["pytorch_model.bin"])
        return folder
    except errors.GatedRepoError:
        reason = "it is gated on the Hub: accept its terms on huggingface.co, then `hf auth login`"
    except errors.RepositoryNotFoundError:
        reason = "the Hub has no such model (check the id; a private one needs `hf auth login`)"
    except errors.LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            reason = ("the Hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache "
                      "(unset HF_HUB_OFFLINE)")
        else:
            reason = "the Hub cannot be reached and it is not in the local cache (check the network)"
    except OSError as e:  # e.g. the cache folder is not writable or the disk is full
        reason = f"fetching it from the Hub failed: {' '.join(str(e).split())}"
    # `org/name` may be either a folder path or a Hub id (model/final is both): say what each gave.
    raise FileNotFoundError(f"model folder not found: {repo_id}; as a Hugging Face Hub id, {reason}. "
                            f"{_MODEL_HINT}")


def model_type(config: dict, where: str | Path) -> str:
    """The checkpoint's architecture: config.json's `model_type`, or for configs saved before
    transformers wrote one (CDial-GPT's LCCC models), what their fields show.

    Raises:
        ValueError: naming the type and what is supported.
    """
    kind = config.get("model_type")
    if kind is None:
        # OpenAIGPTConfig alone has `afn`; GPT2Config has n_embd/n_layer without it.
        kind = "openai-gpt" if "afn" in config else "gpt2" if "n_embd" in config else None
    if isinstance(kind, str) and kind in MODEL_CLASSES:
        return kind
    if kind is None:
        found = "it has no model_type"
    elif not isinstance(kind, str):  # a list or a number: the JSON was edited by hand
        found = f"model_type must be one name such as \"gpt2\", got {json.dumps(kind)}"
    else:
        found = f"model_type {kind!r} is not supported"
    raise ValueError(f"{where}: {found}: chatbot loads gpt2 (GPT-2, e.g. uer/gpt2-chinese-cluecorpussmall) "
                     "and openai-gpt (CDial-GPT, e.g. thu-coai/CDial-GPT_LCCC-base)")


def load_model(source: str | Path, device: str | torch.device = "cpu", dtype: str | None = None, *,
               resize_embeddings: bool = False,
               training: bool = False) -> tuple[PreTrainedModel, BertTokenizerFast, dict]:
    """Load (model in eval mode, tokenizer, training_args) from a model folder or a Hub id.

    The one way models are loaded, for chatting, evaluating and fine-tuning. `model_type` picks
    the class (GPT-2, or OpenAI GPT for CDial-GPT); the special ids are set to the tokenizer's
    ([CLS]/[SEP]/[PAD]: uer's GPT-2 configs say 50256, outside their vocabulary); a model read
    in CDial-GPT's layout gets its tokenizer made character-level, as CDial-GPT reads text.
    `training_args` is `{}` for folders not written by chatbot-train.

    Args:
        dtype: one of `chatbot.options.DTYPES`, resolved for `device` by
            `chatbot.model.precision.resolve_dtype`, for inference (on a CPU even fp32 gets
            prepacked linear layers, see `prepare_model`); None (the default): the weights as
            stored, in fp32, as training, merging adapters and exporting need them.
        resize_embeddings: grow the embedding to the tokenizer's size instead of refusing.
        training: check that the model can be trained here, not only run (see
            `chatbot.model.limits.check_model_fits`).

    Raises:
        FileNotFoundError: if the folder is incomplete or the Hub id cannot be had.
        ValueError: for an unsupported model_type, weights of another architecture or of other
            sizes than config.json's, a damaged file (named; our folders' weights are checked
            against the SHA-256 recorded when they were saved), weights that are NaN or inf, a
            tokenizer larger than the model's embedding, a model too large for the memory that is
            free, or a dtype the device cannot run.
    """
    device = torch.device(device)
    precision = None if dtype is None else resolve_dtype(dtype, device)
    path = resolve_model_dir(source)
    if is_adapter_folder(path):
        model, tokenizer, training_args = _load_adapter_folder(path, where=str(source), training=training)
        return _ready(model, tokenizer, training_args, where=str(source), precision=precision, device=device)
    kind, tokenizer, training_args = _read_model_dir(path, where=str(source))
    config = _read_config(path, kind)
    # Cheap checks first: the headers, the checksums, the sizes; then the model is built.
    shapes = header_shapes(path)  # an unreadable (truncated) header is named as such
    verify_checksums(path)
    check_config_fits_weights(config, path / "config.json", shapes)
    check_model_fits(config, path / "config.json", training=training, device=device,
                     dtype=precision or "fp32")
    model = _load_weights(path, kind, config, where=str(source))
    if resize_embeddings and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return _ready(model, tokenizer, training_args, where=str(source), precision=precision, device=device)


def _ready(model: PreTrainedModel, tokenizer: BertTokenizerFast, training_args: dict, *, where: str,
           precision, device: torch.device) -> tuple[PreTrainedModel, BertTokenizerFast, dict]:
    """`load_model`'s result: weights and vocabulary checked, our special ids set, in its dtype, on its
    device."""
    bad = nonfinite_parameters(model)
    if bad:
        raise ValueError(f"{where}: {len(bad)} weight tensors hold NaN or inf (first: {bad[0]}); "
                         "the run that wrote it diverged. Use an earlier checkpoint-N or best/ folder.")
    check_vocab_fits(model, tokenizer, where=where)
    for name, value in special_ids(tokenizer).items():
        setattr(model.config, name, value)
        setattr(model.generation_config, name, value)
    if precision is None:
        return model.eval().to(device), tokenizer, training_args
    # Converted on the CPU, then moved: a GPU never holds the fp32 copy.
    return prepare_model(model.eval(), precision, device), tokenizer, training_args


def read_adapter_base(path: Path) -> str:
    """The base model (folder or Hub id) of LoRA adapter folder `path`: its adapter_config.json's
    `base_model_name_or_path`.

    Raises:
        ValueError: if the file names none, or names the adapter folder itself.
    """
    file = path / ADAPTER_CONFIG
    fields = read_json_object(file, "LoRA adapter config", "of LoraConfig fields")
    base = fields.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{file} names no base model (base_model_name_or_path): set it to the folder or "
                         "Hugging Face Hub id of the model the adapter was trained on")
    if Path(base).exists() and Path(base).resolve() == path.resolve():
        raise ValueError(f"{file}: base_model_name_or_path names the adapter folder itself; set it to the "
                         "folder or Hub id of the model the adapter was trained on")
    return base


def _load_adapter_folder(path: Path, *, where: str,
                         training: bool) -> tuple[PreTrainedModel, BertTokenizerFast, dict]:
    """(base model with the adapter merged in, tokenizer, training_args) of a bare LoRA adapter folder.

    The tokenizer and training_args are the folder's own when it has them (chatbot-train saves both
    beside the adapter), else the base model's.
    """
    verify_checksums(path)  # the adapter's weights, as chatbot-train recorded them
    base = read_adapter_base(path)
    model, tokenizer, base_args = load_model(base, training=training)
    training_args = read_training_args(path) or base_args
    check_base_unchanged(path, base, training_args)
    model = merge_adapter(model, path)
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        _, tokenizer, _ = _read_model_dir(path, where=where, kind=model.config.model_type)
    return model, tokenizer, training_args


def load_model_tokenizer(source: str | Path) -> tuple[BertTokenizerFast, str]:
    """(tokenizer, dialogue layout) of a model folder or Hub id, the tokenizer reading text as that
    model does (one token per character for CDial-GPT's); a folder of tokenizer files only gives
    its plain tokenizer and CHITCHAT."""
    folder = Path(source)
    if folder.is_dir() and not (folder / "config.json").is_file() and not is_adapter_folder(folder):
        return load_tokenizer(source), CHITCHAT
    path = resolve_model_dir(source)
    if is_adapter_folder(path):
        base = read_adapter_base(path)
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            return load_model_tokenizer(base)  # a bare adapter reads text as its base model
        kind = _model_kind(resolve_model_dir(base))
        _, tokenizer, training_args = _read_model_dir(path, where=str(source), kind=kind)
    else:
        kind, tokenizer, training_args = _read_model_dir(path, where=str(source))
    return tokenizer, dialogue_layout(kind, tokenizer, training_args)


def _model_kind(path: Path) -> str:
    """The model_type of model folder `path`, from its config.json."""
    config_file = path / "config.json"
    return model_type(read_json_object(config_file, "model config", "of model fields"), config_file)


def _read_model_dir(path: Path, *, where: str,
                    kind: str | None = None) -> tuple[str, BertTokenizerFast, dict]:
    """(model_type, tokenizer as the model reads text, training_args or {}) of a checked folder;
    `kind` for a folder without config.json (a LoRA adapter's: its base model's type)."""
    kind = kind or _model_kind(path)
    tokenizer = load_tokenizer(path)
    training_args = read_training_args(path)
    if dialogue_layout(kind, tokenizer, training_args) == CDIAL:
        split_characters(tokenizer)
    return kind, tokenizer, training_args


def _read_config(path: Path, kind: str):
    """config.json as the config class of `kind`, its sizes checked (see `check_gpt2_config`)."""
    try:
        config = MODEL_CLASSES[kind].config_class.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - a wrong type raises StrictDataclassFieldValidationError
        raise ValueError(f"{path / 'config.json'} is not a valid {kind} config "
                         f"({' '.join(str(e).split())})") from None
    check_gpt2_config(config, path / "config.json")
    return config


def _load_weights(path: Path, kind: str, config, *, where: str) -> PreTrainedModel:
    # GPT-2 runs on PyTorch's fused attention; OpenAI GPT only has its own.
    extra = {"attn_implementation": "sdpa"} if kind == "gpt2" else {}
    model_class = MODEL_CLASSES[kind]
    try:
        model, info = model_class.from_pretrained(str(path), config=config, dtype=torch.float32,
                                                  output_loading_info=True, **extra)
    except (RuntimeError, OSError, EOFError, SafetensorError, pickle.UnpicklingError) as e:
        # Tensors of other shapes than config.json's (found here only for pytorch_model.bin: a
        # safetensors header is compared before): "size mismatch" before transformers 5.
        if isinstance(e, RuntimeError) and ("size mismatch" in str(e) or "mismatched_sizes" in str(e)):
            raise ValueError(f"{where}: its weights do not fit a {kind} model of config.json's sizes "
                             "(n_layer, n_embd, n_positions, vocab_size): put back the config.json these "
                             "weights came with") from None
        weights = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), path)
        raise ValueError(f"{weights} could not be read ({first_line(e)}); it may be truncated or damaged: "
                         "copy it again, or use another checkpoint") from None
    missing = info["missing_keys"]
    if missing:  # transformers would start them random: chatting would print noise
        raise ValueError(f"{where}: its weights do not fit a {kind} model "
                         f"({len(missing)} tensors missing, e.g. {sorted(missing)[0]}); "
                         "is config.json's model_type right for these weights?")
    return model


def read_training_args(path: Path) -> dict:
    """training_args.json of a model folder, or {} for folders not written by chatbot-train.

    Raises:
        ValueError: naming the file and the field, for a value chatting or evaluating would
            misread (see `_TRAINING_ARG_VALUES`).
    """
    file = path / TRAINING_ARGS
    if not file.is_file():
        return {}
    args = read_json_object(file, "training arguments file", "of training options")
    for field, (fits, allowed) in _TRAINING_ARG_VALUES.items():
        value = args.get(field)
        if value is not None and not fits(value):
            raise ValueError(f"{file}: {field} is {json.dumps(value, ensure_ascii=False)}, but it must be "
                             f"{allowed} or null; put back the value chatbot-train wrote (the model card, "
                             "README.md beside it, names the settings)")
    return args


# The fields of training_args.json read back when a model is used, with what each may hold.
_TRAINING_ARG_VALUES = {
    "max_len": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                "a positive integer (the --max-len it was trained with)"),
    "layout": (lambda v: v in (CHITCHAT, CDIAL), f'"{CHITCHAT}" or "{CDIAL}"'),
    "loss_on": (lambda v: v in LOSS_ON, " or ".join(f'"{v}"' for v in LOSS_ON)),
    "speaker_ids": (lambda v: isinstance(v, bool), "true or false"),
    "reverse": (lambda v: isinstance(v, bool), "true or false"),
}


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


def dialogue_layout(kind: str, tokenizer: BertTokenizerFast, training_args: dict) -> str:
    """How this model reads a conversation: CHITCHAT (`[CLS] u1 [SEP] u2 [SEP] …`) or CDIAL
    (`[CLS] [speaker1] u1 [speaker2] u2 …`, CDial-GPT's).

    Training records it; otherwise `kind` (the model_type) openai-gpt means CDial-GPT's LCCC
    models, and so does a GPT-2 with CDial-GPT's vocabulary (thu-coai/CDial-GPT2_LCCC-base).

    Raises:
        ValueError: if CDial-GPT's layout is needed but the vocabulary lacks the speaker tokens.
    """
    layout = training_args.get("layout")
    if layout is None:
        vocab = tokenizer.get_vocab()
        cdial_vocab = [vocab.get(t) for t in CDIAL_HEAD] == list(range(len(CDIAL_HEAD)))
        layout = CDIAL if kind == "openai-gpt" or cdial_vocab else CHITCHAT
    if layout == CDIAL:
        speaker_token_ids(tokenizer.get_vocab())
    return layout


def context_limit(model: PreTrainedModel, training_args: dict) -> int:
    """Tokens the model can be given: n_positions, or less if it was trained on shorter examples
    (position embeddings past the training max_len were never trained)."""
    n_positions = model.config.n_positions
    return min(n_positions, training_args.get("max_len") or n_positions)


def check_vocab_fits(model: PreTrainedModel, tokenizer: BertTokenizerFast, *, where: str) -> None:
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


def save_model(path: str | Path, model: PreTrainedModel, tokenizer: BertTokenizerFast,
               training_args: dict, results: dict | None = None) -> Path:
    """Write a self-describing model folder that Hugging Face tools use unchanged.

    See chatbot.model.hf_files for the Hugging Face files it adds to the weights and tokenizer.

    The weights' SHA-256 goes to `weights.sha256`, verified when the folder is loaded (see
    chatbot.model.weights).

    Args:
        results: what training knows about these weights (`step`, `valid_ppl`, `eval_generate`),
            for the model card.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lora = is_lora_model(model)
    # A LoRA model is saved merged, as a plain model every tool reads, with its adapter alone beside it.
    model.save_pretrained(str(path), state_dict=merged_state_dict(model) if lora else None)
    write_checksums(path)
    _save_tokenizer_and_args(path, tokenizer, training_args)
    layout = dialogue_layout(model.config.model_type, tokenizer, training_args)
    export_hf_files(path, tokenizer, layout=layout, model_max_length=context_limit(model, training_args))
    write_model_card(path, model, training_args, results or {})
    if lora:
        save_adapter_folder(path / ADAPTER_DIR, model, tokenizer, training_args)
    return path


def save_adapter_folder(path: str | Path, model: PreTrainedModel, tokenizer: BertTokenizerFast,
                        training_args: dict) -> Path:
    """Write the LoRA adapter of `model` alone: `PeftModel.from_pretrained(base, path)` loads it, and so does
    `load_model(path)` (merged onto the base its adapter_config.json names), reading text as the model
    was trained to with the tokenizer and training_args.json saved beside it. Its weights.sha256 lists
    the adapter's weights."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_adapter(path, model)
    write_checksums(path)
    _save_tokenizer_and_args(path, tokenizer, training_args)
    return path


def _save_tokenizer_and_args(path: Path, tokenizer: BertTokenizerFast, training_args: dict) -> None:
    tokenizer.save_pretrained(str(path))
    # transformers 5 writes only tokenizer.json; vocab.txt keeps the folder usable by tools that
    # read a plain BERT vocabulary (GPT2-chitchat's scripts, older transformers).
    vocab = tokenizer.get_vocab()
    (path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.__getitem__)) + "\n", encoding="utf-8")
    (path / TRAINING_ARGS).write_text(json.dumps(training_args, ensure_ascii=False, indent=2),
                                      encoding="utf-8")

