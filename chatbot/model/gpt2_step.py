"""One decode step of GPT-2, read straight from the model's layers: the hot loop of chat and serving.

A decode step feeds one token per row. `GPT2LMHeadModel.forward` spends as long in Python as in
arithmetic there: at 16 rows on 2 CPU cores, about 400 operator calls through a dozen module
layers, output dataclasses, mask preprocessing and cache bookkeeping, against a bf16 step of
about 25 ms. `gpt2_step_logits` runs the same layers with the same operators in the same order
(embeddings, then per block ln_1 -> c_attn -> cache update -> the model's attention function ->
c_proj -> residual -> ln_2 -> MLP -> residual, then ln_f and lm_head) and nothing else, so its
logits are the model's own. Prompts (many tokens a row) still go through `model(...)`: there the
matmuls dominate. Both write the same cache.
"""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward


@torch.inference_mode()
def gpt2_step_logits(model: GPT2LMHeadModel, input_ids: torch.Tensor, cache: Cache, *,
                     position_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Read one more token per row after the cached ones; the (B, V) logits of the next token.

    Args:
        input_ids: (B, 1).
        position_ids: (B, 1); by default the position after the cached tokens.
        token_type_ids: (B, 1) or None.
        cache: the keys and values of the tokens read so far (one layer per block); updated.
        attention_mask: (B, cached + 1) bool, False where a row has padding; None: no padding.
    """
    body = model.transformer
    if position_ids is None:
        position_ids = torch.full_like(input_ids, cache.get_seq_length())
    h = body.wte(input_ids) + body.wpe(position_ids)
    if token_type_ids is not None:
        h = h + body.wte(token_type_ids)
    implementation = model.config._attn_implementation
    mask = None if attention_mask is None else _mask(attention_mask, implementation, h.dtype)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    upcast = implementation == "eager" and model.config.reorder_and_upcast_attn
    for block, layer in zip(body.h, cache.layers):
        attn = block.attn
        batch, _, width = h.shape
        q, k, v = (x.view(batch, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, D)
                   for x in attn.c_attn(block.ln_1(h)).split(width, dim=2))
        k, v = layer.update(k, v)
        if upcast:
            a, _ = attn._upcast_and_reordered_attn(q, k, v, mask)
        else:
            a, _ = attend(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
        h = attn.c_proj(a.reshape(batch, 1, width)) + h
        h = h + block.mlp(block.ln_2(h))
    return model.lm_head(body.ln_f(h))[:, -1]


def _mask(attention_mask: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The (B, L) padding mask as the attention function takes it: (B, 1, 1, L), bool (True: attend),
    or for eager attention, which adds its mask to the scores, 0 and the dtype's lowest value."""
    mask = attention_mask[:, None, None, :]
    if implementation != "eager":
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)
