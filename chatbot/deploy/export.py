"""`chatbot-export`: one model folder in, one folder for another runtime out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from chatbot.fileio import atomic_dir, check_output_dir
from chatbot.generate.prompt import DialogueModel
from chatbot.model.hf_files import export_hf_files
from chatbot.model.modeling import context_limit, load_model

EXPORT_FILE = "export.json"
TARGETS = {"ct2": "CTranslate2", "onnx": "ONNX Runtime"}
# The packages each target imports (torch.onnx's exporter needs onnx and onnxscript), by extra.
EXTRAS = {"ct2": ("ctranslate2",), "onnx": ("onnx", "onnxscript", "onnxruntime")}


def is_export(path: Path) -> bool:
    """Whether `path` is a folder chatbot-export wrote (so --overwrite may replace it)."""
    try:
        return json.loads((Path(path) / EXPORT_FILE).read_text(encoding="utf-8")).get("to") in TARGETS
    except (OSError, ValueError, AttributeError):
        return False


def export_model(source: str | Path, output: str | Path, *, to: str, quantization: str = "int8",
                 overwrite: bool = False) -> Path:
    """Convert a model folder (or Hub id) for `to` ("ct2" or "onnx") into the folder `output`.

    The output also holds the tokenizer, chat template and generation config, so that
    `AutoTokenizer.from_pretrained(output)` prompts and decodes as `chatbot-chat` does.

    Raises:
        ValueError: for a model the runtime cannot run (OpenAI GPT, speaker token_type_ids), an
            output that is not ours, or a missing runtime package (naming the extra to install).
    """
    check_output_dir(output, is_ours=is_export, overwrite=overwrite, what="chatbot-export output",
                     flag="--output")
    _check_runtime(to)
    model, tokenizer, args = load_model(source)
    check_exportable(model, tokenizer, args, to)
    with atomic_dir(output, is_export) as tmp:
        if to == "ct2":
            from chatbot.deploy.ct2 import convert_ct2

            convert_ct2(model, tokenizer, tmp, quantization=quantization)
        else:
            from chatbot.deploy.ort import export_onnx

            export_onnx(model, tmp, quantization=quantization)
        # The tokenizer and the Hugging Face side files, fixed as save_model writes them (issue 19).
        tokenizer.save_pretrained(str(tmp))
        layout = DialogueModel(model, tokenizer, args).layout
        export_hf_files(tmp, tokenizer, layout=layout, model_max_length=context_limit(model, args))
        record = {"to": to, "runtime": TARGETS[to], "quantization": quantization, "source": str(source)}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(output)


def check_exportable(model, tokenizer, args: dict, to: str) -> None:
    """Refuse models that `to` would run wrongly.

    Raises:
        ValueError: naming the model kind, why the runtime cannot run it, and what can.
    """
    runtime = TARGETS[to]
    if model.config.model_type != "gpt2":
        why = ("CTranslate2 has no converter for it" if to == "ct2" else
               "transformers' OpenAI GPT has no KV cache to export")
        raise ValueError(f"{runtime} export supports GPT-2 models; this one is {model.config.model_type} "
                         f"(CDial-GPT's LCCC models) and {why}. Chat with it through chatbot-chat or "
                         "chatbot-serve.")
    if DialogueModel(model, tokenizer, args).speaker_ids is not None:
        raise ValueError(f"this model reads speaker token_type_ids (trained with --speaker-ids or in "
                         f"CDial-GPT's layout), which {runtime}'s generation cannot feed at every step. "
                         "Chat with it through chatbot-chat or chatbot-serve, or export a model trained "
                         "without --speaker-ids.")


def _check_runtime(to: str) -> None:
    missing = [m for m in EXTRAS[to] if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--to {to} needs {', '.join(missing)}, not installed here: "
                         f"pip install 'chatbot-zh[{to}]'")
