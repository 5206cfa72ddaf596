"""ONNX Runtime: a GPT-2 exported with its KV cache, and a reply loop over the session.

The graph takes `input_ids`, `attention_mask`, `position_ids` and `past_key_values.{i}.key/value`
and returns `logits` and `present.{i}.key/value`, the names optimum and ONNX Runtime GenAI use
for GPT-2. Each step feeds only the new token, as `chatbot.generate.sampling` does. optimum's
exporter is not used: it needs transformers < 4.58, and this package needs transformers 5.

    model = OnnxModel(folder)
    reply_ids = model.generate_ids(prompt_ids, eos_id=..., banned_ids=..., options=options)
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from transformers import DynamicCache, GPT2LMHeadModel

from chatbot.generate.sampling import CACHE_KEYWORD, adjust_logits, sample_next_token
from chatbot.options import SamplingOptions

MODEL_FILE = "model.onnx"


class _CachedForward(nn.Module):
    """GPT-2's forward over flat cache tensors (k0, v0, k1, v1, …), which an ONNX graph can take."""

    def __init__(self, model: GPT2LMHeadModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        cache = DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{CACHE_KEYWORD: cache})
        return (out.logits, *[t for layer in cache.layers for t in (layer.keys, layer.values)])


def cache_names(n_layer: int, prefix: str = "past_key_values") -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def export_onnx(model: GPT2LMHeadModel, folder: Path, *, quantization: str = "int8") -> None:
    """Write `model.onnx` (with `model.onnx.data`, its weights) and `config.json` into `folder`.

    int8 quantizes the matmuls' weights with ONNX Runtime's dynamic quantization.
    """
    c = model.config
    past = [torch.zeros(1, c.n_head, 3, c.n_embd // c.n_head) for _ in range(2 * c.n_layer)]
    example = (torch.ones(1, 2, dtype=torch.long), torch.ones(1, 5, dtype=torch.long),
               torch.tensor([[3, 4]]), past)
    batch, new, cached, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past", "total"))
    names = cache_names(c.n_layer)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # The exporter warns about its own internals (pytree deprecations, the shared axis names
        # above): nothing a user of chatbot-export can act on.
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        # It also logs each torchvision op it cannot register, torchvision being absent.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        target = Path(scratch if quantization == "int8" else folder) / MODEL_FILE
        torch.onnx.export(
            _CachedForward(model).eval(), example, str(target), dynamo=True, verbose=False,
            input_names=["input_ids", "attention_mask", "position_ids", *names],
            output_names=["logits", *cache_names(c.n_layer, "present")],
            dynamic_shapes=({0: batch, 1: new}, {0: batch, 1: total}, {0: batch, 1: new},
                            [{0: batch, 2: cached} for _ in names]))
        if quantization == "int8":
            # quantize_dynamic logs a suggestion to pre-process image models on the root logger.
            logging.disable(logging.WARNING)
            try:
                quantize_dynamic(target, folder / MODEL_FILE, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
    c.save_pretrained(str(folder))


class OnnxModel:
    """An exported folder's session, with the reply loop `ChatBot` runs (batch 1, one candidate)."""

    def __init__(self, folder: str | Path, *, threads: int = 0):
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        settings = onnxruntime.SessionOptions()
        settings.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        self.session = onnxruntime.InferenceSession(str(Path(folder) / MODEL_FILE), settings,
                                                    providers=["CPUExecutionProvider"])
        self.names = cache_names(config["n_layer"])
        self.head_shape = (config["n_head"], config["n_embd"] // config["n_head"])

    def generate_ids(self, input_ids: list[int], *, eos_id: int, banned_ids, options: SamplingOptions,
                     generator: torch.Generator | None = None) -> list[int]:
        """The reply's ids, [SEP] included if reached, sampled as `generate_tokens` samples.

        Args:
            input_ids: the prompt, e.g. `ChatBot.prompt(...).input_ids` or the chat template's ids.
            banned_ids: ids never sampled (`chatbot.tokenization.banned_token_ids`).
            options: sampling options; `num_candidates` must be 1.
        """
        n_head, head_dim = self.head_shape
        feeds = {name: np.zeros((1, n_head, 0, head_dim), np.float32) for name in self.names}
        context = torch.tensor([input_ids])  # (1, T)
        banned = torch.tensor(sorted(banned_ids), dtype=torch.long)
        generated = torch.empty(1, 0, dtype=torch.long)  # (1, step)
        new_ids, done = context, 0  # what the next forward feeds; what the cache already holds
        for step in range(options.max_new_tokens):
            logits = self._step(new_ids, feeds, done=done)
            done += new_ids.size(1)
            scores = adjust_logits(logits, generated, context, step, eos_id=eos_id, banned_ids=banned,
                                   repetition_penalty=options.repetition_penalty,
                                   penalize_context=options.penalize_context,
                                   no_repeat_ngram_size=options.no_repeat_ngram_size,
                                   min_new_tokens=options.min_new_tokens)
            new_ids = sample_next_token(scores, temperature=options.temperature, top_k=options.top_k,
                                        top_p=options.top_p, generator=generator)[:, None]  # (1, 1)
            generated = torch.cat([generated, new_ids], 1)
            if new_ids.item() == eos_id:
                break
        return generated[0].tolist()

    def _step(self, ids: torch.Tensor, feeds: dict, *, done: int) -> torch.Tensor:
        """The (1, V) logits after `ids`, `done` tokens being in the cache; updates the cache in `feeds`."""
        n = ids.size(1)
        feeds.update(input_ids=ids.numpy(), attention_mask=np.ones((1, done + n), np.int64),
                     position_ids=np.arange(done, done + n, dtype=np.int64)[None])
        logits, *present = self.session.run(None, feeds)
        feeds.update(zip(self.names, present))
        return torch.from_numpy(logits[:, -1])
