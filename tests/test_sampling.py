import math

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import DynamicCache

from chatbot.options import SamplingOptions, check_options
from chatbot.generate.sampling import (CACHE_KEYWORD, apply_repetition_penalty, filter_logits,
                                       generate_tokens, repeated_ngram_ids, sample_next_token)
from chatbot.tokenization import hidden_token_ids

pytestmark = pytest.mark.transformers_api

EOS, FALLBACK = 3, 9
CONTEXT = [2, 7, 8, 3, 10, 11, 3]  # [CLS] 你好 [SEP] 我很 [SEP]


def script(model, favoured: list[int], boost: int | None = None):
    """Make `model` favour favoured[i] at generation step i (then [SEP]), with FALLBACK second best.

    A hook on the LM head keeps the real model and its KV cache in play.
    """
    calls = []

    def hook(module, inputs, logits):
        step = len(calls)
        calls.append(inputs[0].shape[1])
        logits = logits.clone()
        logits[:, -1, favoured[step] if step < len(favoured) else EOS] += 100
        logits[:, -1, FALLBACK] += 50
        if boost is not None:
            logits[:, -1, boost] += 1000
        return logits

    model.lm_head.register_forward_hook(hook)
    return calls


def run(model, **kwargs) -> list[list[int]]:
    kwargs.setdefault("temperature", 0)
    return list(generate_tokens(model, CONTEXT, eos_id=EOS, **kwargs))


@pytest.mark.parametrize("token_id", [0, 5, 23])
def test_top_k_1_on_one_hot_logits_returns_that_id(token_id):
    logits = torch.zeros(1, 24)
    logits[0, token_id] = 1.0
    gen = torch.Generator().manual_seed(0)
    assert sample_next_token(logits, temperature=1.0, top_k=1, generator=gen).tolist() == [token_id]


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert filter_logits(logits, top_k=2).tolist() == [[-math.inf, 4.0, 3.0, -math.inf]]


@pytest.mark.parametrize("top_p, kept", [(0.0, [1]), (0.4, [1]), (0.6, [1, 2]), (0.95, [0, 1, 2]),
                                         (1.0, [0, 1, 2])])
def test_top_p_keeps_the_nucleus_and_never_less_than_one_token(top_p, kept):
    logits = torch.tensor([[0.2, 0.5, 0.3]]).log()
    out = filter_logits(logits, top_p=top_p)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept


def test_repetition_penalty_lowers_probability_for_positive_and_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[0] < before[0] and after[1] < before[1]


def test_repeated_ngram_ids_bans_tokens_that_complete_a_seen_ngram():
    assert repeated_ngram_ids([5, 6, 7, 5, 6, 8, 5], 3) == []
    assert repeated_ngram_ids([5, 6, 7, 5, 6], 3) == [7]
    assert repeated_ngram_ids([5, 6, 5, 7, 5], 2) == [6, 7]
    assert repeated_ngram_ids([5, 6, 5], 0) == []


@pytest.mark.parametrize("name, value, allowed", [
    ("temperature", -0.1, ">= 0"), ("top_k", 1.5, "integer >= 0"), ("top_p", 1.2, "[0, 1]"),
    ("repetition_penalty", 0.5, ">= 1"), ("max_new_tokens", 0, ">= 1"), ("num_candidates", 0, ">= 1"),
    ("temperature", float("nan"), ">= 0"), ("penalize_context", "yes", "true or false"),
])
def test_bad_option_names_itself_and_the_allowed_range(name, value, allowed):
    with pytest.raises(ValueError, match=rf"{name} must be .*{allowed}.*got {value!r}"):
        check_options(**{name: value})


def test_options_cross_checks_and_unknown_names():
    with pytest.raises(ValueError, match=r"min_new_tokens \(5\) must be <= max_new_tokens \(4\)"):
        SamplingOptions(min_new_tokens=5, max_new_tokens=4)
    with pytest.raises(ValueError, match="unknown sampling option 'temprature'"):
        SamplingOptions().replace(temprature=0.5)
    assert SamplingOptions().replace(top_k=3).top_k == 3


@pytest.mark.parametrize("favoured, min_new, max_new, expected", [
    ([7, 8], 0, 10, [7, 8, EOS]),  # stops right after [SEP]
    ([], 0, 10, [EOS]),  # an immediate [SEP] is allowed without a minimum
    ([7, 8, 10, 11], 0, 2, [7, 8]),  # max_new_tokens cuts before [SEP]
    ([], 2, 10, [FALLBACK, FALLBACK, EOS]),  # [SEP] is banned for the first min_new_tokens steps
    ([7, EOS, 10], 3, 3, [7, FALLBACK, 10]),  # min == max forces the length
])
def test_generation_stops_at_eos(tiny_model, favoured, min_new, max_new, expected):
    script(tiny_model, favoured)
    steps = run(tiny_model, min_new_tokens=min_new, max_new_tokens=max_new)
    assert [s[0] for s in steps] == expected


def test_finished_candidates_keep_yielding_eos(tiny_model):
    script(tiny_model, [7, EOS])
    assert run(tiny_model, max_new_tokens=5, num_candidates=3) == [[7, 7, 7], [EOS, EOS, EOS]]


def test_kv_cache_matches_a_full_recompute_greedy_loop(tiny_model):
    types = [5, 5, 5, 5, 6, 6, 6]
    cached = [s[0] for s in run(tiny_model, max_new_tokens=20, min_new_tokens=20,
                                token_type_ids=types, reply_type_id=5)]
    ids, type_ids = list(CONTEXT), list(types)
    with torch.inference_mode():
        for _ in range(20):
            logits = tiny_model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([type_ids])).logits
            logits[0, -1, EOS] = -math.inf
            ids.append(int(logits[0, -1].argmax()))
            type_ids.append(5)
    assert cached == ids[len(CONTEXT):]


def test_context_runs_once_then_one_token_per_step(tiny_model):
    shapes = []
    tiny_model.transformer.wte.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    run(tiny_model, max_new_tokens=4, min_new_tokens=4, num_candidates=2)
    # Batch 1 over the context, then the cache is copied for 2 candidates; no forward after the last token.
    assert shapes == [(1, len(CONTEXT)), (2, 1), (2, 1), (2, 1)]


def test_same_seed_same_sample(tiny_model):
    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        return run(tiny_model, temperature=1.0, top_k=0, max_new_tokens=15, num_candidates=4, generator=gen)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_banned_ids_are_never_sampled_even_when_most_likely(tiny_model, tokenizer):
    banned = hidden_token_ids(tokenizer) - {EOS}
    script(tiny_model, [], boost=tokenizer.unk_token_id)
    gen = torch.Generator().manual_seed(0)
    steps = run(tiny_model, temperature=2.0, top_k=0, min_new_tokens=30, max_new_tokens=30, num_candidates=8,
                banned_ids=banned, generator=gen)
    assert not {t for s in steps for t in s} & banned


def test_penalties_change_the_output_as_documented(tiny_model):
    plain = [s[0] for s in run(tiny_model, max_new_tokens=20, min_new_tokens=20)]
    no_repeat = [s[0] for s in run(tiny_model, max_new_tokens=20, min_new_tokens=20, no_repeat_ngram_size=1)]
    assert len(set(plain)) < len(plain)  # greedy on a random model repeats itself
    assert len(set(no_repeat)) == len(no_repeat)
    context_penalised = run(tiny_model, max_new_tokens=5, repetition_penalty=1e6, penalize_context=True)
    assert not {s[0] for s in context_penalised} & (set(CONTEXT) - {EOS})


def test_context_longer_than_the_model_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"context \(7 tokens\) \+ max_new_tokens \(60\) exceeds .* \(64\)"):
        run(tiny_model, max_new_tokens=60)


def test_the_cache_goes_in_under_the_name_this_transformers_reads():
    renamed = Version(transformers.__version__) >= Version("5.24")
    assert CACHE_KEYWORD == ("cache" if renamed else "past_key_values")


@pytest.mark.skipif(CACHE_KEYWORD == "past_key_values", reason="no other name for the cache before 5.24")
def test_a_deprecated_argument_fails_the_tests(tiny_model):
    # pyproject's filterwarnings turns the FutureWarning transformers issues on our behalf into an error.
    with pytest.raises(FutureWarning, match="`past_key_values` is deprecated"):
        tiny_model(input_ids=torch.tensor([[2]]), past_key_values=DynamicCache())
