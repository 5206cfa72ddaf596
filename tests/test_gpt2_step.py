import copy

import pytest
import torch
from transformers import GPT2LMHeadModel

from chatbot.generate.kvcache import preallocated_cache
from chatbot.generate.sampling import CACHE_KEYWORD, next_logits
from chatbot.model.gpt2_step import gpt2_step_logits
from chatbot.model.precision import cpu_supports, prepare_model
from conftest import tiny_config

pytestmark = pytest.mark.transformers_api

# Three left-padded prompts: row 0 has 3 padding tokens, row 2 one.
PROMPTS = torch.tensor([[0, 0, 0, 2, 7, 8, 3], [2, 9, 10, 11, 12, 13, 3], [0, 2, 16, 3, 14, 15, 3]])
MASK = PROMPTS != 0
TYPES = torch.tensor([[0, 0, 0, 5, 5, 5, 5], [5, 5, 5, 6, 6, 6, 6], [0, 5, 5, 5, 6, 6, 6]])


def variants(tokenizer):
    """(name, model) pairs: transformers' attention implementations and config options, and what
    `prepare_model` makes of the model for CPU inference."""
    def build(implementation="sdpa", **overrides):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(tiny_config(tokenizer, **overrides)).eval()
        model.config._attn_implementation = implementation
        return model

    models = {"sdpa": build(), "eager": build("eager"),
              "eager, upcast, scaled by layer": build("eager", reorder_and_upcast_attn=True,
                                                      scale_attn_by_inverse_layer_idx=True),
              "unscaled": build(scale_attn_weights=False)}
    for dtype in ("fp32", "bf16", "int8"):
        if cpu_supports(dtype):
            models[dtype] = prepare_model(copy.deepcopy(models["sdpa"]), dtype)
    return models


def prefill(model, types=None):
    """Read PROMPTS into a cache with room to spare; the cache."""
    cache = preallocated_cache(model.config.n_layer, PROMPTS.size(1) + 4)
    positions = (MASK.cumsum(1) - 1).clamp(min=0)
    next_logits(model, PROMPTS, cache, position_ids=positions, attention_mask=MASK, token_type_ids=types)
    return cache


def step_inputs():
    token = torch.tensor([[7], [8], [9]])
    positions = MASK.sum(1, keepdim=True)  # each row's next position, after its own tokens
    return token, positions, torch.cat([MASK, torch.ones(3, 1, dtype=torch.bool)], 1)


@pytest.mark.parametrize("with_types", [False, True], ids=["no segments", "segments"])
def test_a_decode_step_gives_the_logits_of_the_whole_sequence_read_at_once(tokenizer, with_types):
    token, positions, mask = step_inputs()
    types = TYPES if with_types else None
    step_types = torch.tensor([[6], [5], [5]]) if with_types else None
    for name, model in variants(tokenizer).items():
        logits = gpt2_step_logits(model, token, prefill(model, types), position_ids=positions,
                                  attention_mask=mask, token_type_ids=step_types)
        # The reference: no cache, the whole left-padded sequence through the model.
        whole = torch.cat([PROMPTS, token], 1)
        whole_types = None if types is None else torch.cat([types, step_types], 1)
        expected = model(input_ids=whole, attention_mask=mask, token_type_ids=whole_types,
                         position_ids=torch.cat([(MASK.cumsum(1) - 1).clamp(min=0), positions], 1)).logits[:, -1]
        tolerance = {"bf16": 0.1, "int8": 0.05}.get(name, 1e-5)
        torch.testing.assert_close(logits.float(), expected.float(), atol=tolerance, rtol=0, msg=name)


def test_a_decode_step_is_bit_for_bit_transformers_own_cached_step(tokenizer):
    """Same operators in the same order: what `model(...)` gives over the same cache, to the bit."""
    token, positions, mask = step_inputs()
    for name, model in variants(tokenizer).items():
        if model.config._attn_implementation == "eager":
            continue  # transformers adds a bool 4-D mask to eager scores; the test above covers eager
        ours = gpt2_step_logits(model, token, prefill(model), position_ids=positions, attention_mask=mask)
        theirs = model(input_ids=token, position_ids=positions, attention_mask=mask[:, None, None, :],
                       use_cache=True, **{CACHE_KEYWORD: prefill(model)}).logits[:, -1]
        assert torch.equal(ours, theirs), name


def test_the_default_position_follows_the_cached_tokens_and_the_cache_grows_by_one(tiny_model):
    cache = preallocated_cache(2, 8)
    prompt = torch.tensor([[2, 7, 8, 3]])
    next_logits(tiny_model, prompt, cache)
    logits = gpt2_step_logits(tiny_model, torch.tensor([[9]]), cache)
    assert cache.get_seq_length() == 5
    expected = tiny_model(input_ids=torch.tensor([[2, 7, 8, 3, 9]])).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_next_logits_runs_decode_steps_without_the_model_forward(tiny_model, monkeypatch):
    cache = preallocated_cache(2, 8)
    next_logits(tiny_model, torch.tensor([[2, 7, 8, 3]]), cache)  # a prompt goes through forward

    def refuse(*args, **kwargs):
        raise AssertionError("a decode step called GPT2LMHeadModel.forward")

    monkeypatch.setattr(tiny_model, "forward", refuse)
    assert next_logits(tiny_model, torch.tensor([[9]]), cache).shape == (1, tiny_model.config.vocab_size)
