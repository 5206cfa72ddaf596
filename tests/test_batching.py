import copy

import pytest
import torch

from chatbot.generate.batching import BatchDecoder, NewRows
from chatbot.options import SamplingOptions
from chatbot.generate.sampling import generate_tokens
from chatbot.model.precision import prepare_model
from conftest import drain

pytestmark = pytest.mark.transformers_api

EOS = 3
PROMPTS = [[2, 7, 8, 3], [2, 9, 10, 11, 12, 13, 3, 14, 15, 3], [2, 16, 3],
           [2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 3, 17, 3]]
BANNED = {0, 1, 2, 4}
SETTINGS = {
    "greedy": dict(temperature=0),
    "sampled": dict(temperature=1.0, top_k=0, top_p=0.9),
    "penalised": dict(temperature=0.7, top_k=5, repetition_penalty=1.3, penalize_context=True,
                      no_repeat_ngram_size=2, min_new_tokens=3),
}


@pytest.fixture(params=["as built", "fp32", "bf16"])
def model(request, tiny_model):
    """The tiny model as built, and as `prepare_model` converts it for CPU inference (packed
    oneDNN linear layers; for bf16 the decode attention too)."""
    if request.param == "as built":
        return tiny_model
    return prepare_model(copy.deepcopy(tiny_model), request.param)


def alone(model, prompt, options, seed, types=None, reply_type=None):
    """What sampling.generate_tokens gives for one prompt."""
    fields = {k: v for k, v in vars(options).items() if k != "num_candidates"}
    steps = generate_tokens(model, prompt, eos_id=EOS, banned_ids=BANNED, generator=torch.Generator().manual_seed(seed),
                            token_type_ids=types, reply_type_id=reply_type, **fields)
    return [ids[0] for ids in steps]


def decode_staggered(decoder, joins, removals=()):
    """Step `decoder` until it is empty; joins[step] = (keys, prompt, options, seeds) are added before that step."""
    out, step = {}, 0
    while len(decoder) or step in joins or step < max(joins):
        if step in joins:
            keys, prompt, options, seeds = joins[step]
            decoder.add(keys, prompt, options, seeds)
        if step in removals:
            decoder.remove(removals[step])
        for key, token_id, finished in decoder.step():
            out.setdefault(key, []).append(token_id)
        step += 1
    return out


@pytest.mark.parametrize("setting", SETTINGS)
def test_rows_joining_at_any_step_decode_as_they_would_alone(model, setting):
    options = SamplingOptions(max_new_tokens=12, **SETTINGS[setting])
    decoder = BatchDecoder(model, eos_id=EOS, banned_ids=BANNED)
    # Prompts of different lengths join mid-way (the longest last, so every row gets left-padded),
    # and prompt 2 joins as two choices with their own seeds.
    joins = {0: (["a"], PROMPTS[0], options, [100]), 2: (["b"], PROMPTS[1], options, [101]),
             5: (["c0", "c1"], PROMPTS[2], options, [102, 103]), 6: (["d"], PROMPTS[3], options, [104])}
    out = decode_staggered(decoder, joins)
    assert out["a"] == alone(model, PROMPTS[0], options, 100)
    assert out["b"] == alone(model, PROMPTS[1], options, 101)
    assert out["c0"] == alone(model, PROMPTS[2], options, 102)
    assert out["c1"] == alone(model, PROMPTS[2], options, 103)
    assert out["d"] == alone(model, PROMPTS[3], options, 104)


def test_each_row_keeps_its_own_options_and_removed_rows_leave_at_once(tiny_model):
    greedy, sampled = (SamplingOptions(temperature=0, max_new_tokens=10),
                       SamplingOptions(top_k=0, min_new_tokens=6, max_new_tokens=6))
    decoder = BatchDecoder(tiny_model, eos_id=EOS, banned_ids=BANNED)
    # The longest prompt leaves at step 3, so the cache is trimmed under the rows that stay.
    joins = {0: (["long"], PROMPTS[3], sampled, [1]), 1: (["g"], PROMPTS[0], greedy, [None]),
             2: (["s"], PROMPTS[1], sampled, [2])}
    out = decode_staggered(decoder, joins, removals={3: "long"})
    assert len(out["long"]) == 3
    assert out["g"] == alone(tiny_model, PROMPTS[0], greedy, 0)
    assert out["s"] == alone(tiny_model, PROMPTS[1], sampled, 2)
    assert len(out["s"]) == 6 and len(out["g"]) <= 10


@pytest.mark.parametrize("together", [False, True])
def test_speaker_segment_ids_follow_each_row(tiny_model, together):
    options = SamplingOptions(top_k=0, max_new_tokens=8)
    decoder = BatchDecoder(tiny_model, eos_id=EOS, banned_ids=BANNED)
    rows = [(PROMPTS[0], [5, 5, 5, 5], 6), (PROMPTS[2], [5, 5, 5], 6), (PROMPTS[1], [5] * 7 + [6] * 3, 5)]
    if together:  # padded together, segment ids and all
        decoder.add_many([NewRows([i], p, options, [i], t, r) for i, (p, t, r) in enumerate(rows)])
    else:
        for i, (prompt, types, reply_type) in enumerate(rows):
            decoder.add([i], prompt, options, [i], token_type_ids=types, reply_type_id=reply_type)
    out = drain(decoder)
    assert [out[i] for i in range(3)] == [alone(tiny_model, p, options, i, t, r) for i, (p, t, r) in enumerate(rows)]


@pytest.mark.parametrize("setting", SETTINGS)
def test_prompts_prefilled_together_decode_as_they_would_alone(model, setting):
    options = SamplingOptions(max_new_tokens=12, **SETTINGS[setting])
    decoder = BatchDecoder(model, eos_id=EOS, banned_ids=BANNED)
    decoder.add(["early"], PROMPTS[1], options, [9])
    out = {key: [token_id] for key, token_id, _ in decoder.step()}
    # Four prompts of 4 to 14 tokens in one padded forward pass, one of them as two choices.
    decoder.add_many([NewRows(["a"], PROMPTS[0], options, [100]), NewRows(["b0", "b1"], PROMPTS[3], options, [1, 2]),
                      NewRows(["c"], PROMPTS[2], options, [102])])
    assert decoder.keys == ["early", "a", "b0", "b1", "c"]
    assert all(layer.keys.isfinite().all() for layer in decoder._cache.layers)
    drain(decoder, out)
    assert out["a"] == alone(model, PROMPTS[0], options, 100)
    assert out["b0"] == alone(model, PROMPTS[3], options, 1)
    assert out["b1"] == alone(model, PROMPTS[3], options, 2)
    assert out["c"] == alone(model, PROMPTS[2], options, 102)
    assert out["early"] == alone(model, PROMPTS[1], options, 9)


@pytest.mark.parametrize("call, message", [
    (lambda d, o: d.add_many([NewRows(["a"], PROMPTS[0], o, [1]), NewRows(["a"], PROMPTS[1], o, [2])]),
     "a key may name one row only"),
    (lambda d, o: d.add_many([NewRows(["a"], PROMPTS[0], o, [1]), NewRows(["b"], [2, 3], o, [2], [5, 5], 6)]),
     "must all have token_type_ids or none"),
    (lambda d, o: d.add(["a"], PROMPTS[0], o, [1, 2]), "one seed per key"),
    (lambda d, o: d.add(["x"], PROMPTS[0], o, [1]), "already decoding"),
    (lambda d, o: d.add(["b"], list(range(60)), o, [1]), "exceeds the model's n_positions"),
])
def test_bad_rows_are_refused_naming_the_problem(tiny_model, call, message):
    decoder = BatchDecoder(tiny_model, eos_id=EOS)
    options = SamplingOptions(max_new_tokens=8)
    decoder.add(["x"], PROMPTS[0], options, [0])
    with pytest.raises(ValueError, match=message):
        call(decoder, options)


def test_a_model_of_another_architecture_is_refused_by_name(tokenizer):
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=8, is_decoder=True))
    with pytest.raises(ValueError, match="runs GPT-2 and OpenAI GPT .* got 'bert'"):
        BatchDecoder(model, eos_id=EOS)
