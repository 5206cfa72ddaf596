"""Batched decoding for a server: many sequences, one forward pass per step, joining and leaving at any step.

The batched twin of `sampling.generate_tokens`, and as pure: no threads, no tokenizer, no I/O.
Each sequence (a *row*) keeps its own prompt, options, random generator and position; all rows
share one KV cache whose rows are left-padded to a common length and masked, so a step feeds one
token per row through the model once. New sequences are prefilled together (left-padded and
masked, so each gets what `generate_tokens` would give it) and join the running batch at the
next step; a finished or removed one leaves at once and its cache rows are dropped. GPT-2 and
CDial-GPT's OpenAI GPT both run this way (`sampling.next_logits`).

Each row's scores get the same bans and penalties as `generate_tokens` gives one candidate, and
each row draws with its own generator from the same probabilities, so a seeded reply is the same
alone or batched, up to float rounding in the batched matmuls (which the tests check does not
change the tokens). The rows' scores are adjusted and sampled as one batch, not row by row: at 16
rows, row by row took a tenth of a step.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from chatbot.generate.kvcache import preallocated_cache
from chatbot.options import SamplingOptions
from chatbot.generate.sampling import (banned_next, check_prompt, next_logits, penalize_repeats,
                                       sample_next_token)


@dataclass(frozen=True)
class NewRows:
    """One prompt to decode as `len(keys)` rows (e.g. the n choices of one request).

    keys: a new, unique name per row.
    input_ids: (T,) the prompt.
    options: sampling options of these rows (`num_candidates` is not used: one row is one reply).
    seeds: one per key; row i samples with `torch.Generator().manual_seed(seeds[i])`, or with the
        global generator when its seed is None.
    token_type_ids, reply_type_id: segment ids of the prompt and of the reply, together or not at all.
    """

    keys: Sequence[Hashable]
    input_ids: Sequence[int]
    options: SamplingOptions
    seeds: Sequence[int | None]
    token_type_ids: Sequence[int] | None = None
    reply_type_id: int | None = None


@dataclass
class _Row:
    key: Hashable
    context: torch.Tensor  # (1, T) the prompt, for penalize_context
    options: SamplingOptions
    generator: torch.Generator | None
    generated: list[int]
    position: int  # position id of the next token fed to the model
    reply_type_id: int | None


class BatchDecoder:
    """Decode many sequences together; add and remove them between steps.

        decoder = BatchDecoder(model, eos_id=sep_id)
        decoder.add(["a"], ids_a, options, seeds=[1])
        decoder.step()              # [("a", token, finished)]
        decoder.add(["b0", "b1"], ids_b, options, seeds=[7, 8])   # two choices of one prompt
        decoder.step()              # one forward for a, b0 and b1
    """

    def __init__(self, model: PreTrainedModel, *, eos_id: int, banned_ids: Collection[int] = ()):
        """Raises:
            ValueError: for a model other than GPT-2 and OpenAI GPT (CDial-GPT).
        """
        if model.config.model_type not in ("gpt2", "openai-gpt"):
            raise ValueError(f"batched decoding runs GPT-2 and OpenAI GPT (CDial-GPT) models, got "
                             f"{model.config.model_type!r}")
        self.model = model
        self.eos_id = eos_id
        self._banned = torch.tensor(sorted(banned_ids), dtype=torch.long, device=model.device)
        self._rows: list[_Row] = []
        # (B, V): each row's scores of its next token
        self._logits = torch.zeros(0, model.config.vocab_size, device=model.device)
        self._cache: Cache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.bool, device=model.device)  # (B, L): False = padding

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def keys(self) -> list[Hashable]:
        """The rows being decoded, in batch order."""
        return [row.key for row in self._rows]

    def add(self, keys: Sequence[Hashable], input_ids: Sequence[int], options: SamplingOptions,
            seeds: Sequence[int | None], *, token_type_ids: Sequence[int] | None = None,
            reply_type_id: int | None = None) -> None:
        """Prefill one prompt and add one row per key: `add_many` with one `NewRows`."""
        self.add_many([NewRows(keys, input_ids, options, seeds, token_type_ids, reply_type_id)])

    @torch.inference_mode()
    def add_many(self, requests: Sequence[NewRows]) -> None:
        """Prefill several prompts in one forward pass and add their rows.

        Prompts are left-padded to the longest and the padding masked, so each row's tokens are
        those it would get alone; one pass over the weights serves them all, which on a CPU makes
        four 64-token prompts cost about what three cost one by one.

        Raises:
            ValueError: for a key already decoding or given twice, seeds not matching keys, a
                prompt too long, or segment ids given for some prompts and not others.
        """
        for r in requests:
            self._check(r)
        keys = [key for r in requests for key in r.keys]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a key may name one row only, got {keys}")
        if len({r.token_type_ids is None for r in requests}) > 1:
            raise ValueError("prompts prefilled together must all have token_type_ids or none")
        room = max(r.options.max_new_tokens for r in requests)
        logits, cache, mask = self._prefill(requests, room)
        # One cache row per choice: row i of the prefill serves every key of request i.
        index = torch.tensor([i for i, r in enumerate(requests) for _ in r.keys], device=mask.device)
        if len(index) > len(requests):
            for layer in cache.layers:
                layer.select(index)
        self._join(cache, mask[index], room)
        self._logits = torch.cat([self._logits.to(logits.dtype), logits[index]])
        for r in requests:
            context = torch.as_tensor(r.input_ids, dtype=torch.long, device=mask.device)[None]  # (1, T)
            for key, seed in zip(r.keys, r.seeds):
                generator = None if seed is None else torch.Generator(mask.device).manual_seed(seed)
                self._rows.append(_Row(key, context, r.options, generator, [], context.size(1),
                                       r.reply_type_id))

    def _check(self, r: NewRows) -> None:
        if len(r.seeds) != len(r.keys) or not r.keys:
            raise ValueError(f"need one seed per key, got {len(r.keys)} keys and {len(r.seeds)} seeds")
        if clash := set(r.keys) & set(self.keys):
            raise ValueError(f"rows {sorted(map(str, clash))} are already decoding")
        check_prompt(self.model, len(r.input_ids), r.options.max_new_tokens, r.token_type_ids,
                     r.reply_type_id)

    def _prefill(self, requests: Sequence[NewRows], room: int) -> tuple[torch.Tensor, Cache, torch.Tensor]:
        """Run the left-padded prompts through the model: (next-token logits (R, V), their cache with
        room for `room` more tokens, mask (R, T))."""
        device = self.model.device
        length = max(len(r.input_ids) for r in requests)
        ids = torch.zeros(len(requests), length, dtype=torch.long, device=device)
        types = None if requests[0].token_type_ids is None else torch.zeros_like(ids)
        mask = torch.zeros(len(requests), length, dtype=torch.bool, device=device)
        for i, r in enumerate(requests):
            start = length - len(r.input_ids)
            ids[i, start:] = torch.as_tensor(r.input_ids, device=device)
            mask[i, start:] = True
            if types is not None:
                types[i, start:] = torch.as_tensor(r.token_type_ids, device=device)
        # With room for the longest reply, this cache can become the batch's as it is.
        cache = preallocated_cache(self.model.config.num_hidden_layers, length + room)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = next_logits(self.model, ids, cache, token_type_ids=types, position_ids=positions,
                             attention_mask=None if mask.all() else mask)  # (R, V)
        return logits, cache, mask

    def remove(self, key: Hashable) -> None:
        """Stop decoding `key` now (a cancelled request, a stop string); unknown keys are ignored."""
        self._keep([i for i, row in enumerate(self._rows) if row.key != key])

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, int, bool]]:
        """Pick one token for every row, drop the rows that finished, then run one forward pass for the rest.

        Returns:
            (key, token id, finished) per row, in batch order. A row finishes on eos_id or when it
            reaches its max_new_tokens; it is gone from the decoder when step returns.
        """
        if not self._rows:
            return []
        tokens = self._sample(self._scores())
        results, kept = [], []
        for i, (row, token) in enumerate(zip(self._rows, tokens.tolist())):
            row.generated.append(token)
            finished = token == self.eos_id or len(row.generated) >= row.options.max_new_tokens
            results.append((row.key, token, finished))
            if not finished:
                kept.append(i)
        next_ids = tokens[kept]
        self._keep(kept)
        if self._rows:
            self._forward(next_ids[:, None])
        return results

    def _scores(self) -> torch.Tensor:
        """(B, V): each row's next-token logits with its bans and penalties, as `adjust_logits` gives them."""
        scores = self._logits.to(torch.float32, copy=True)
        rows, ids = [], []  # scores set to -inf
        for i, row in enumerate(self._rows):
            o = row.options
            if o.repetition_penalty != 1.0:
                generated = torch.tensor([row.generated], dtype=torch.long, device=scores.device)
                seen = torch.cat([row.context, generated], 1) if o.penalize_context else generated
                scores[i:i + 1] = penalize_repeats(scores[i:i + 1], seen, o.repetition_penalty, self.eos_id)
            banned = banned_next(row.generated, len(row.generated), eos_id=self.eos_id,
                                 no_repeat_ngram_size=o.no_repeat_ngram_size, min_new_tokens=o.min_new_tokens)
            rows += [i] * len(banned)
            ids += banned
        if ids:
            scores[rows, ids] = -math.inf
        scores[:, self._banned] = -math.inf
        return scores

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        """One token per row, (B,): rows with the same temperature, top_k and top_p are drawn together."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self._rows):
            groups.setdefault((row.options.temperature, row.options.top_k, row.options.top_p), []).append(i)
        tokens = torch.empty(len(self._rows), dtype=torch.long, device=scores.device)
        for (temperature, top_k, top_p), indices in groups.items():
            index = slice(None) if len(indices) == len(self._rows) else indices
            generators = [self._rows[i].generator for i in indices]
            tokens[index] = sample_next_token(scores[index], temperature=temperature, top_k=top_k,
                                              top_p=top_p, generator=generators)
        return tokens

    def _forward(self, input_ids: torch.Tensor) -> None:
        """Feed (B, 1) tokens at each row's own position; keep each row's next-token logits."""
        device = self.model.device
        positions = torch.tensor([[row.position] for row in self._rows], device=device)  # (B, 1)
        types = None
        if self._rows[0].reply_type_id is not None:
            types = torch.tensor([[row.reply_type_id] for row in self._rows], device=device)
        self._mask = F.pad(self._mask, (0, 1), value=True)  # (B, L + 1)
        self._logits = next_logits(self.model, input_ids, self._cache, token_type_ids=types,
                                   position_ids=positions, attention_mask=self._mask)  # (B, V)
        for row in self._rows:
            row.position += 1

    def _join(self, cache: Cache, mask: torch.Tensor, room: int) -> None:
        """Add a prefilled cache's rows (which may yet take `room` tokens), left-padding the shorter side."""
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        room = max(room, self._room())
        for mine, new in zip(self._cache.layers, cache.layers):
            mine.stack(new, room)
        length = max(self._mask.size(1), mask.size(1))
        self._mask = torch.cat([_pad_left(self._mask, length), _pad_left(mask, length)])

    def _room(self) -> int:
        """Tokens the cache must still take: the most any row may yet generate."""
        return max((row.options.max_new_tokens - len(row.generated) for row in self._rows), default=0)

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows, and drop the cache columns that are padding in every row left."""
        if len(indices) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in indices]
        index = torch.tensor(indices, dtype=torch.long, device=self._mask.device)
        self._logits = self._logits[index]
        if not indices:
            self._cache, self._mask = None, self._mask[:0, :0]
            return
        start = int(self._mask[index].any(0).nonzero()[0])
        self._mask = self._mask[index, start:]
        for layer in self._cache.layers:
            layer.select(index, start)


def _pad_left(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Pad a (B, L) mask on the left with False (padding) to `length` columns."""
    return F.pad(mask, (length - mask.size(1), 0))
