import pytest
import torch
from transformers import DynamicCache

from chatbot import sampling
from chatbot.kvcache import PreallocatedLayer
from chatbot.sampling import generate_tokens


def test_steps_write_into_one_buffer_and_return_the_filled_part():
    layer = PreallocatedLayer(capacity=5)
    prefill = torch.arange(2 * 3 * 4.0).view(1, 2, 3, 4)  # (B, H, T, D)
    keys, values = layer.update(prefill, -prefill)
    buffer = keys.data_ptr()
    step = torch.full((1, 2, 1, 4), 7.0)
    keys, values = layer.update(step, -step)
    assert keys.data_ptr() == buffer and layer.get_seq_length() == 4
    assert torch.equal(keys, torch.cat([prefill, step], 2)) and torch.equal(values, -keys)
    layer.batch_repeat_interleave(3)
    assert layer.keys.shape == (3, 2, 4, 4) and torch.equal(layer.keys[2], keys[0])
    layer.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))
    with pytest.raises(ValueError, match="the KV cache holds 5 tokens; 6 were given"):
        layer.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))


@pytest.mark.parametrize("options", [{"temperature": 0}, {"top_k": 5, "num_candidates": 3}])
def test_generation_is_the_same_as_with_transformers_dynamic_cache(tiny_model, monkeypatch, options):
    def run():
        steps = generate_tokens(tiny_model, [2, 7, 8, 3, 9, 10, 3], max_new_tokens=12, eos_id=3, min_new_tokens=12,
                                generator=torch.Generator().manual_seed(0), **options)
        return list(steps)

    ours = run()
    monkeypatch.setattr(sampling, "preallocated_cache", lambda n_layer, capacity: DynamicCache())
    assert ours == run() and len(ours) == 12

