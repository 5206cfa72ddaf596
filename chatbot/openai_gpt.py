"""A KV cache for OpenAI GPT, the architecture of CDial-GPT's LCCC models.

transformers' `OpenAIGPTModel` takes no `past_key_values`, so every generated token would re-read
the whole conversation (as CDial-GPT's own interact.py does). `OpenAIGPTCache` runs the same
blocks with the model's own weights, keeping each layer's keys and values: a step then costs one
token's forward pass. Same arithmetic as `OpenAIGPTModel.forward` in eval mode (post-LayerNorm
blocks, the -1e4 causal mask, token_type_ids embedded by the token embedding).
"""

from __future__ import annotations

import math

import torch
from transformers import OpenAIGPTLMHeadModel


class OpenAIGPTCache:
    """Keys and values of every layer for the tokens read so far, by one model in eval mode."""

    def __init__(self, model: OpenAIGPTLMHeadModel):
        self.model = model
        self.keys: list[torch.Tensor] = []  # per layer (B, H, T, D)
        self.values: list[torch.Tensor] = []

    def repeat(self, n: int) -> None:
        """Copy each row's cache `n` times: (B, …) -> (B * n, …), e.g. one context for N candidates."""
        self.keys = [k.repeat_interleave(n, 0) for k in self.keys]
        self.values = [v.repeat_interleave(n, 0) for v in self.values]

    @torch.inference_mode()
    def next_logits(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Read (B, T) more tokens after the cached ones; the (B, V) logits of the next token."""
        body = self.model.transformer
        past = self.keys[0].size(2) if self.keys else 0
        positions = torch.arange(past, past + input_ids.size(1), device=input_ids.device)
        h = body.tokens_embed(input_ids) + body.positions_embed(positions)[None]
        if token_type_ids is not None:
            h = h + body.tokens_embed(token_type_ids)
        for layer, block in enumerate(body.h):
            h = self._block(layer, block, h, past)
        return self.model.lm_head(h[:, -1])

    def _block(self, layer: int, block, h: torch.Tensor, past: int) -> torch.Tensor:
        attn = block.attn
        batch, length, width = h.shape
        q, k, v = (x.view(batch, length, attn.n_head, -1).transpose(1, 2)  # (B, H, T, D)
                   for x in attn.c_attn(h).split(attn.split_size, dim=2))
        if layer < len(self.keys):
            k = torch.cat([self.keys[layer], k], 2)
            v = torch.cat([self.values[layer], v], 2)
            self.keys[layer], self.values[layer] = k, v
        else:
            self.keys.append(k)
            self.values.append(v)
        w = q @ k.transpose(-1, -2)  # (B, H, T, past + T)
        if attn.scale:
            w = w / math.sqrt(v.size(-1))
        causal = attn.bias[:, :, past:past + length, :past + length]
        w = w * causal + -1e4 * (1 - causal)  # the model's own mask, not -inf
        a = (w.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
        n = block.ln_1(h + attn.c_proj(a))
        return block.ln_2(n + block.mlp(n))
