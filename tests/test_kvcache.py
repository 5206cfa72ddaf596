import pytest
import torch
from transformers import DynamicCache

from chatbot.generate import sampling
from chatbot.generate.kvcache import PreallocatedLayer
from chatbot.generate.sampling import generate_tokens

pytestmark = pytest.mark.transformers_api


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
    keys, _ = layer.update(torch.ones(3, 2, 1, 4), torch.ones(3, 2, 1, 4))  # full: the buffer doubles
    assert layer.capacity == 10 and keys.shape == (3, 2, 6, 4)
    assert torch.equal(keys[1, :, :4], torch.cat([prefill, step], 2)[0]) and keys[:, :, 5].eq(1).all()


def test_select_keeps_rows_and_drops_leading_tokens_keeping_the_room():
    layer = PreallocatedLayer(capacity=6)
    keys = torch.arange(3 * 1 * 4 * 2.0).view(3, 1, 4, 2)  # (B, H, T, D)
    layer.update(keys, -keys)
    layer.select(torch.tensor([0, 2]), start=1)
    assert layer.keys.shape == (2, 1, 3, 2) and torch.equal(layer.keys, keys[[0, 2], :, 1:])
    assert torch.equal(layer.values, -layer.keys) and layer.capacity == 5
    buffer = layer.keys.data_ptr()
    layer.update(torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2))  # the room is still there: in place
    assert layer.keys.data_ptr() == buffer and layer.keys[:, 0, :, 0].tolist() == [[2, 4, 6, 1, 1], [18, 20, 22, 1, 1]]


def test_stack_left_pads_the_shorter_side_with_zeros():
    mine, other = PreallocatedLayer(capacity=3), PreallocatedLayer(capacity=5)
    mine.update(torch.full((1, 1, 2, 1), 7.0), torch.full((1, 1, 2, 1), -7.0))
    other.update(torch.arange(2 * 1 * 3 * 1.0).view(2, 1, 3, 1), torch.zeros(2, 1, 3, 1))
    mine.stack(other, room=2)
    assert mine.keys[:, 0, :, 0].tolist() == [[0, 7, 7], [0, 1, 2], [3, 4, 5]]
    assert mine.values[:, 0, :, 0].tolist() == [[0, -7, -7], [0, 0, 0], [0, 0, 0]]
    assert mine.capacity == 5 and mine.get_seq_length() == 3


@pytest.mark.parametrize("options", [{"temperature": 0}, {"top_k": 5, "num_candidates": 3}])
def test_generation_is_the_same_as_with_transformers_dynamic_cache(tiny_model, monkeypatch, options):
    def run():
        steps = generate_tokens(tiny_model, [2, 7, 8, 3, 9, 10, 3], max_new_tokens=12, eos_id=3, min_new_tokens=12,
                                generator=torch.Generator().manual_seed(0), **options)
        return list(steps)

    ours = run()
    monkeypatch.setattr(sampling, "preallocated_cache", lambda n_layer, capacity: DynamicCache())
    assert ours == run() and len(ours) == 12

