import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from chatbot.model.kernels import PackedLinear, can_pack, decode_attention, fuse_mlp_gelu, pack_linear_layers

pytestmark = pytest.mark.skipif(not can_pack(), reason="this PyTorch has no oneDNN")


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_layer_computes_what_the_linear_layer_did(dtype, tolerance, bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias).to(dtype)
    holder = nn.Sequential(linear)
    pack_linear_layers(holder)
    assert type(holder[0]) is PackedLinear
    for shape in [(1, 24), (3, 5, 24), (2, 1, 1, 24)]:  # a decode step, a prefill, any leading dims
        x = torch.randn(shape, dtype=dtype)
        out = holder(x)
        assert out.shape == (*shape[:-1], 40) and out.dtype == dtype
        torch.testing.assert_close(out.float(), F.linear(x.float(), linear.weight.float(),
                                                         None if linear.bias is None else linear.bias.float()),
                                   atol=tolerance, rtol=tolerance)
    # The oneDNN tensor is no parameter: state_dict and parameters() see the bias only.
    assert list(holder.state_dict()) == (["0.bias"] if bias else [])


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_a_gelu_fused_into_a_packed_layer_computes_the_mlp_it_replaced(dtype, tolerance):
    torch.manual_seed(0)
    mlp = nn.Module()
    mlp.c_fc, mlp.act = nn.Linear(24, 40).to(dtype), nn.GELU(approximate="tanh")
    other = nn.Module()  # exact GELU: oneDNN's tanh post-op would not compute it
    other.c_fc, other.act = nn.Linear(24, 40).to(dtype), nn.GELU()
    x = torch.randn(3, 5, 24, dtype=dtype)
    expected = F.gelu(F.linear(x.float(), mlp.c_fc.weight.float(), mlp.c_fc.bias.float()), approximate="tanh")
    holder = fuse_mlp_gelu(pack_linear_layers(nn.Sequential(mlp, other)))
    assert type(mlp.act) is nn.Identity and mlp.c_fc.gelu_tanh
    assert type(other.act) is nn.GELU and not other.c_fc.gelu_tanh
    torch.testing.assert_close(mlp.act(mlp.c_fc(x)).float(), expected, atol=tolerance, rtol=tolerance)
    assert "then GELU (tanh)" in repr(holder)


def attention_inputs(dtype, length=9, masked=True):
    torch.manual_seed(1)
    query, key, value = (torch.randn(3, 4, n, 8).to(dtype) for n in (1, length, length))
    mask = torch.ones(3, 1, 1, length, dtype=torch.bool)
    if masked:
        mask[0, ..., :4] = False  # a left-padded row
        mask[2, ..., :1] = False
    return query, key, value, mask


def test_decode_attention_matches_sdpa_in_fp32():
    query, key, value, mask = attention_inputs(torch.bfloat16)
    expected, _ = sdpa_attention_forward(nn.Module(), query.float(), key.float(), value.float(), mask,
                                         scaling=0.3)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    for given in (mask, additive, None):
        out, weights = decode_attention(nn.Module(), query, key, value, given, scaling=0.3)
        assert out.shape == (3, 1, 4, 8) and out.dtype == torch.bfloat16 and weights is None
        if given is not None:
            torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    unmasked, _ = sdpa_attention_forward(nn.Module(), query.float(), key.float(), value.float(), None,
                                         scaling=0.3)
    torch.testing.assert_close(out.float(), unmasked, atol=2e-2, rtol=2e-2)


def test_decode_attention_reads_keys_from_a_view_of_a_larger_cache():
    query, key, value, mask = attention_inputs(torch.bfloat16)
    cache_k, cache_v = torch.zeros(3, 4, 20, 8, dtype=torch.bfloat16), torch.zeros(3, 4, 20, 8, dtype=torch.bfloat16)
    cache_k[:, :, :9], cache_v[:, :, :9] = key, value
    out, _ = decode_attention(nn.Module(), query, cache_k[:, :, :9], cache_v[:, :, :9], mask)
    assert torch.equal(out, decode_attention(nn.Module(), query, key, value, mask)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_anything_but_a_bf16_decode_step_is_sdpa_itself(dtype):
    query, key, value, mask = attention_inputs(dtype)
    prefill = torch.randn(3, 4, 9, 8).to(dtype)
    for q in ([prefill] if dtype == torch.bfloat16 else [prefill, query]):
        out, _ = decode_attention(nn.Module(), q, key, value, mask if q is query else None, scaling=0.5)
        expected, _ = sdpa_attention_forward(nn.Module(), q, key, value, mask if q is query else None,
                                             scaling=0.5)
        assert torch.equal(out, expected)
