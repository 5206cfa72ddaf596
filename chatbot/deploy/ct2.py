"""CTranslate2: a GPT-2 folder converted to its format, and our sampling options as its arguments.

    generator = ctranslate2.Generator(folder)
    tokens = tokenizer.convert_ids_to_tokens(prompt_ids)
    result = generator.generate_batch([tokens], **generate_kwargs(tokenizer, options))[0]
    reply_ids = result.sequences_ids[0]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ctranslate2
from ctranslate2.converters import TransformersConverter
from transformers import BertTokenizerFast, PreTrainedModel

from chatbot.options import SamplingOptions
from chatbot.tokenization import banned_token_ids

QUANTIZATION = {"int8": "int8", "fp32": "float32"}  # ours -> CTranslate2's name


class _LoadedConverter(TransformersConverter):
    """The converter over a model and tokenizer loaded by `load_model`, which repairs folders
    written before issue 19 (no eos_token: the converter writes `eos_token: null` and the
    Generator refuses the result), instead of reading them again from the folder."""

    def __init__(self, config_dir: str, model: PreTrainedModel, tokenizer: BertTokenizerFast):
        super().__init__(config_dir)
        self._model, self._tokenizer = model, tokenizer

    def load_model(self, model_class, model_name_or_path, **kwargs):
        return self._model

    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
        return self._tokenizer


def convert_ct2(model: PreTrainedModel, tokenizer: BertTokenizerFast, folder: Path, *,
                quantization: str = "int8") -> None:
    """Write CTranslate2's `model.bin`, `config.json` and `vocabulary.json` into `folder`.

    int8 keeps the linear layers' weights in int8 and runs their matmuls in int8 on the CPU.
    """
    # The converter reads the architecture from a folder's config.json, then asks the hooks above.
    with tempfile.TemporaryDirectory() as config_dir:
        model.config.save_pretrained(config_dir)
        converter = _LoadedConverter(config_dir, model, tokenizer)
        converter.convert(str(folder), quantization=QUANTIZATION[quantization], force=True)


def generate_kwargs(tokenizer: BertTokenizerFast, options: SamplingOptions = SamplingOptions()) -> dict:
    """`Generator.generate_batch` arguments that sample as `ChatBot` does with `options`.

    Same stop ([SEP]), bans, length limits and top-k / top-p / temperature. CTranslate2 counts
    the prompt in `no_repeat_ngram_size` and `repetition_penalty`, as `--penalize-context` does:
    with those on, its replies differ from `ChatBot`'s default ones.
    """
    greedy = options.temperature == 0
    banned_tokens = tokenizer.convert_ids_to_tokens(sorted(banned_token_ids(tokenizer)))
    return {"end_token": tokenizer.sep_token, "include_prompt_in_result": False,
            "suppress_sequences": [[t] for t in banned_tokens],
            "min_length": options.min_new_tokens, "max_length": options.max_new_tokens,
            "sampling_topk": 1 if greedy else options.top_k, "sampling_topp": options.top_p,
            "sampling_temperature": 1.0 if greedy else options.temperature,
            "repetition_penalty": options.repetition_penalty,
            "no_repeat_ngram_size": options.no_repeat_ngram_size}


def load_generator(folder: str | Path, *, threads: int = 0) -> ctranslate2.Generator:
    """A CPU generator over an exported folder (`threads` 0: CTranslate2's default)."""
    return ctranslate2.Generator(str(folder), device="cpu", intra_threads=threads)
