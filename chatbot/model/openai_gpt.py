"""A KV-cached forward pass for OpenAI GPT, the architecture of CDial-GPT's LCCC models.

transformers' `OpenAIGPTModel` takes no `past_key_values`, so every generated token would re-read
the whole conversation (as CDial-GPT's own interact.py does). `openai_gpt_logits` runs the same
blocks with the model's own weights, reading and writing a transformers `Cache`: a step then
costs one token's forward pass, and the cache is the one GPT-2 uses, so `generate_tokens` and
`BatchDecoder` treat both architectures alike. Same arithmetic as `OpenAIGPTModel.forward` in
eval mode (post-LayerNorm blocks, the -1e4 causal mask, token_type_ids embedded by the token
embedding, padding masked with the dtype's lowest value).
"""

from __future__ import annotations

import math

import torch
from transformers import OpenAIGPTLMHeadModel
from transformers.cache_utils import Cache


@torch.inference_mode()
def openai_gpt_logits(model: OpenAIGPTLMHeadModel, input_ids: torch.Tensor, cache: Cache, *,
                      token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Read (B, T) more tokens after the cached ones; the (B, V) logits of the next token.

    Args:
        cache: keys and values of the tokens read so far (an empty one at first); updated.
        position_ids: (B, T); by default the T positions after the cached tokens.
        attention_mask: (B, cached + T) bool, False where a row has padding; None: no padding.
    """
    body = model.transformer
    past = cache.get_seq_length()
    length = input_ids.size(1)
    if position_ids is None:
        position_ids = torch.arange(past, past + length, device=input_ids.device)[None]
    h = body.tokens_embed(input_ids) + body.positions_embed(position_ids)
    if token_type_ids is not None:
        h = h + body.tokens_embed(token_type_ids)
    # The model's own mask: 1 where a token may look, 0 where it may not (later tokens).
    causal = torch.ones(length, past + length, dtype=h.dtype, device=h.device).tril(past)
    padding = None if attention_mask is None else ~attention_mask[:, None, None, :]  # (B, 1, 1, past + T)
    for layer, block in enumerate(body.h):
        h = _block(block, h, cache.layers[layer], causal, padding)
    return model.lm_head(h[:, -1])


def _block(block, h: torch.Tensor, layer, causal: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    attn = block.attn
    batch, length, width = h.shape
    q, k, v = (x.view(batch, length, attn.n_head, -1).transpose(1, 2)  # (B, H, T, D)
               for x in attn.c_attn(h).split(attn.split_size, dim=2))
    k, v = layer.update(k, v)
    w = q @ k.transpose(-1, -2)  # (B, H, T, past + T)
    if attn.scale:
        w = w / math.sqrt(v.size(-1))
    w = w * causal + -1e4 * (1 - causal)  # -1e4, not -inf, as the model does
    if padding is not None:
        w = w.masked_fill(padding, torch.finfo(w.dtype).min)
    a = (w.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
    n = block.ln_1(h + attn.c_proj(a))
    return block.ln_2(n + block.mlp(n))
