"""Pure generation core: logit filters, one sampling step, and a KV-cached token generator.

No tokenizer, no printing, no global state: everything arrives as arguments, randomness comes
from an explicit `torch.Generator`, and every option is checked where it is used, naming itself
and the allowed range.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection, Iterator, Sequence

import torch
from transformers import GPT2LMHeadModel, PreTrainedModel
from transformers.cache_utils import Cache

from chatbot.generate.kvcache import preallocated_cache
from chatbot.model.gpt2_step import gpt2_step_logits
from chatbot.model.openai_gpt import openai_gpt_logits
from chatbot.options import check_options


# One generator for every row, or one per row (None: the global one).
Generators = torch.Generator | Sequence[torch.Generator | None] | None


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the logits outside the top-k / nucleus (top-p) set to -inf.

    Args:
        logits: (B, V) scores.
        top_k: keep the k highest logits per row; 0 keeps all.
        top_p: keep the smallest set of tokens whose probability sum reaches top_p. The most
            likely token is always kept, so top_p=0 means greedy.

    Returns:
        A new (B, V) tensor.
    """
    check_options(top_k=top_k, top_p=top_p)
    logits = logits.clone()
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits[logits < kth] = -math.inf
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first never is.
        drop_sorted = probs.cumsum(dim=-1) - probs > top_p
        logits[drop_sorted.scatter(-1, order, drop_sorted)] = -math.inf
    return logits


def sample_next_token(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      generator: Generators = None) -> torch.Tensor:
    """Pick one token per row: argmax when temperature is 0, else sample the filtered softmax.

    Args:
        logits: (B, V) scores; -inf marks tokens that must not be picked.
        generator: source of randomness, for reproducible samples; or one per row (None: the global
            one), each row then drawing what it would draw alone with its generator.

    Returns:
        (B,) token ids.
    """
    check_options(temperature=temperature, top_k=top_k)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        # Drawing among the k best is the distribution `filter_logits` leaves, but the softmax and
        # the draw touch k scores instead of the whole vocabulary (a server draws for many rows).
        best, candidates = torch.topk(logits, top_k, dim=-1)  # (B, k)
        probs = filter_logits(best, top_p=top_p).softmax(dim=-1)
        return candidates.gather(-1, _draw(probs, generator)).squeeze(-1)
    probs = filter_logits(logits, top_p=top_p).softmax(dim=-1)
    return _draw(probs, generator).squeeze(-1)


def _draw(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """(B, 1) indices drawn from (B, n) probabilities, with one generator for every row or one per row
    (then each row draws as it would alone)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)
    return torch.cat([torch.multinomial(row[None], 1, generator=g) for row, g in zip(probs, generator)])


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make each token in `seen_ids` less likely: positive logits are divided by `penalty`, negative
    ones multiplied (GPT2-chitchat divides both, which makes negative-logit tokens *more* likely).

    Args:
        logits: (B, V) scores.
        seen_ids: (B, S) ids to penalise; repeats count once.
        penalty: >= 1; 1 leaves the logits unchanged.

    Returns:
        A new (B, V) tensor.
    """
    check_options(repetition_penalty=penalty)
    scores = logits.gather(-1, seen_ids)  # (B, S)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(-1, seen_ids, scores)


def repeated_ngram_ids(ids: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `ids` (n=0 bans nothing)."""
    check_options(no_repeat_ngram_size=n)
    if n == 0 or len(ids) < n:
        return []
    prefix = ids[len(ids) - n + 1:]
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == prefix]


def adjust_logits(logits, generated, context, step, *, eos_id, banned_ids, repetition_penalty,
                  penalize_context, no_repeat_ngram_size, min_new_tokens) -> torch.Tensor:
    """Apply bans and penalties to this step's (N, V) logits; `generated` is (N, step), `context` (1, T)."""
    logits = logits.to(torch.float32, copy=True)  # the model's logits may be an expanded view
    seen = torch.cat([context.expand(len(logits), -1), generated], 1) if penalize_context else generated
    logits = penalize_repeats(logits, seen, repetition_penalty, eos_id)
    for row, ids in enumerate(generated.tolist()):
        if banned := banned_next(ids, step, eos_id=eos_id, no_repeat_ngram_size=no_repeat_ngram_size,
                                 min_new_tokens=min_new_tokens):
            logits[row, banned] = -math.inf
    logits[:, banned_ids] = -math.inf
    return logits


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float, eos_id: int) -> torch.Tensor:
    """`apply_repetition_penalty` to every seen id but eos_id; the (N, V) logits, new or as given."""
    if penalty == 1.0 or not seen.size(1):
        return logits
    eos_logit = logits[:, eos_id].clone()
    logits = apply_repetition_penalty(logits, seen, penalty)
    # The context is full of [SEP]; penalising it would only make replies run on.
    logits[:, eos_id] = eos_logit
    return logits


def banned_next(generated: list[int], step: int, *, eos_id: int, no_repeat_ngram_size: int,
                min_new_tokens: int) -> list[int]:
    """The ids one row may not pick at `step`: those completing an n-gram already in its reply, and
    eos_id while the reply is shorter than min_new_tokens."""
    banned = repeated_ngram_ids(generated, no_repeat_ngram_size)
    return banned + [eos_id] if step < min_new_tokens else banned


# transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns, and stops working
# in 5.40); 5.3 - 5.23 know only `past_key_values`. GPT-2 is the one model handed a cache (OpenAI GPT runs
# through openai_gpt_logits), so its forward names the keyword, read once.
CACHE_KEYWORD = ("cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters
                 else "past_key_values")


def next_logits(model: PreTrainedModel, input_ids: torch.Tensor, cache: Cache, *,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, V) logits of the token after (B, T) `input_ids`, read after the tokens in `cache` (updated).

    Args:
        model: GPT-2, or OpenAI GPT (CDial-GPT), which transformers runs without a cache. One token a
            row on a GPT2LMHeadModel (a decode step) runs through `gpt2_step_logits`, the same
            arithmetic without transformers' Python around it.
        position_ids: (B, T); by default the positions after the cached tokens.
        attention_mask: (B, cached + T) bool, False where a row is padded; None: no padding.
    """
    if model.config.model_type == "openai-gpt":
        return openai_gpt_logits(model, input_ids, cache, token_type_ids=token_type_ids,
                                 position_ids=position_ids, attention_mask=attention_mask)
    if input_ids.size(1) == 1 and isinstance(model, GPT2LMHeadModel):
        return gpt2_step_logits(model, input_ids, cache, token_type_ids=token_type_ids,
                                position_ids=position_ids, attention_mask=attention_mask)
    return model(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                 attention_mask=attention_mask, use_cache=True, logits_to_keep=1,
                 **{CACHE_KEYWORD: cache}).logits[:, -1]


def check_prompt(model: PreTrainedModel, length: int, max_new_tokens: int, token_type_ids,
                 reply_type_id) -> None:
    """Refuse a prompt of `length` tokens that cannot be continued by `max_new_tokens` within the
    model's positions, or segment ids for the prompt without the reply's (or the other way round)."""
    n_positions = model.config.n_positions
    if length + max_new_tokens > n_positions:
        raise ValueError(f"context ({length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's n_positions ({n_positions}); shorten the context or max_new_tokens")
    if (token_type_ids is None) != (reply_type_id is None):
        raise ValueError("token_type_ids and reply_type_id must be given together")


@torch.inference_mode()
def generate_tokens(model: PreTrainedModel, input_ids: Sequence[int] | torch.Tensor, *, max_new_tokens: int,
                    eos_id: int, min_new_tokens: int = 0, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, repetition_penalty: float = 1.0, penalize_context: bool = False,
                    no_repeat_ngram_size: int = 0, num_candidates: int = 1, banned_ids: Collection[int] = (),
                    token_type_ids: Sequence[int] | torch.Tensor | None = None,
                    reply_type_id: int | None = None,
                    generator: torch.Generator | None = None) -> Iterator[list[int]]:
    """Sample `num_candidates` continuations of one context in one batch, with a KV cache.

    The context runs through the model once; after that each step feeds only the newest token
    and reuses the cached keys and values, so a step costs one token's forward pass, not the
    whole sequence's (GPT2-chitchat re-runs everything per token).

    Args:
        model: a causal LM (GPT-2) on the device the ids should live on.
        input_ids: (T,) context ids.
        max_new_tokens: steps at most; T + max_new_tokens must fit the model's n_positions.
        eos_id: the id that ends a candidate ([SEP]).
        min_new_tokens: eos_id is forbidden before this many tokens.
        banned_ids: ids never sampled (specials, [unusedN]).
        token_type_ids: (T,) segment ids of the context, for models trained with them.
        reply_type_id: the segment id of the generated tokens; needed with token_type_ids.
        generator: randomness for sampling; same seed, same tokens.
        Other options: see `chatbot.options.SamplingOptions`.

    Yields:
        One list of `num_candidates` ids per step. A candidate that has produced eos_id keeps
        yielding eos_id; generation stops once every candidate has.

    Raises:
        ValueError: for an option out of range or a context too long for the model.
    """
    check_options(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                  penalize_context=penalize_context, no_repeat_ngram_size=no_repeat_ngram_size,
                  min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens, num_candidates=num_candidates)
    check_prompt(model, len(input_ids), max_new_tokens, token_type_ids, reply_type_id)
    device = model.device
    context = torch.as_tensor(input_ids, dtype=torch.long, device=device)[None]  # (1, T)
    types = None if token_type_ids is None else torch.as_tensor(token_type_ids, device=device)[None]
    logits_after = _stepper(model, context, types, reply_type_id, num_candidates, max_new_tokens)
    logits = logits_after(None)  # (N, V)
    banned = torch.tensor(sorted(banned_ids), dtype=torch.long, device=device)
    generated = torch.empty(num_candidates, 0, dtype=torch.long, device=device)  # (N, step)
    finished = torch.zeros(num_candidates, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        scores = adjust_logits(logits, generated, context, step, eos_id=eos_id, banned_ids=banned,
                               repetition_penalty=repetition_penalty, penalize_context=penalize_context,
                               no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens)
        next_ids = sample_next_token(scores, temperature=temperature, top_k=top_k, top_p=top_p,
                                     generator=generator)
        next_ids = next_ids.masked_fill(finished, eos_id)  # (N,)
        generated = torch.cat([generated, next_ids[:, None]], 1)
        finished |= next_ids == eos_id
        yield next_ids.tolist()
        if finished.all() or step == max_new_tokens - 1:
            return
        logits = logits_after(generated)


def _stepper(model: PreTrainedModel, context: torch.Tensor, types: torch.Tensor | None,
             reply_type_id: int | None, n: int,
             max_new_tokens: int) -> Callable[[torch.Tensor | None], torch.Tensor]:
    """A function from the tokens generated so far, (N, step) or None before the first, to the
    (N, V) logits of the next token of each of the N candidates, feeding the model only new tokens."""
    # Room for the context and every new token: steps write in place (see chatbot.generate.kvcache).
    cache = preallocated_cache(model.config.num_hidden_layers, context.size(1) + max_new_tokens)
    reply_types = None if reply_type_id is None else torch.full((n, 1), reply_type_id, device=context.device)

    def step(generated: torch.Tensor | None) -> torch.Tensor:
        if generated is None:
            # Prefill once with batch 1, then copy the cache per candidate: cheaper than N prefills.
            logits = next_logits(model, context, cache, token_type_ids=types)  # (1, V)
            cache.batch_repeat_interleave(n)
            return logits.expand(n, -1)
        return next_logits(model, generated[:, -1:], cache, token_type_ids=reply_types)
    return step
