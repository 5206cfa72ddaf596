import math

import pytest
import torch
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

from chatbot.train.optim import apply_freeze, make_optimizer, make_scheduler

pytestmark = pytest.mark.transformers_api

# The tiny GPT-2 (conftest): 22 x 32 token and 64 x 32 position embeddings = 2,752 weights,
# 12,704 per block, 64 in the final LayerNorm; lm_head shares the token embedding.
EMBEDDINGS, BLOCK, TOTAL = 2_752, 12_704, 28_224


@pytest.mark.parametrize("spec, trainable", [
    (None, TOTAL), ("embeddings", TOTAL - EMBEDDINGS), ("layers:1", TOTAL - EMBEDDINGS - BLOCK),
    ("layers:2", TOTAL - EMBEDDINGS - 2 * BLOCK),
])
def test_freeze_counts_what_is_left_to_train(tiny_model, spec, trainable):
    assert apply_freeze(tiny_model, spec) == (trainable, TOTAL)
    assert tiny_model.lm_head.weight.requires_grad == (spec is None)


def test_freeze_refuses_more_layers_than_the_model_has(tiny_model):
    with pytest.raises(ValueError, match=r"--freeze layers:3: the model has only 2 layers"):
        apply_freeze(tiny_model, "layers:3")


def test_freeze_refuses_to_leave_nothing_to_train():
    # OpenAI GPT (CDial-GPT) has no final LayerNorm: freezing every block freezes everything.
    config = OpenAIGPTConfig(vocab_size=22, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    model = OpenAIGPTLMHeadModel(config)
    with pytest.raises(ValueError, match=r"--freeze layers:1 leaves nothing to train"):
        apply_freeze(model, "layers:1")


def test_optimizer_skips_weight_decay_on_biases_and_norms_and_frozen_weights(tiny_model):
    apply_freeze(tiny_model, "embeddings")
    optimizer = make_optimizer(tiny_model, lr=0.1, weight_decay=0.01, device=torch.device("cpu"))
    # Matrices: 4 per block; vectors: 2 LayerNorms x 2 + 4 biases per block, and the final LayerNorm.
    assert [len(g["params"]) for g in optimizer.param_groups] == [8, 18]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize("kind, factors", [
    ("cosine", [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0]),
    ("linear", [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
    ("constant", [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_scheduler_warms_up_then_decays(kind, factors):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = make_scheduler(optimizer, warmup=2, total=6, kind=kind)
    lrs = []
    for _ in factors:
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == [2.0 * f for f in factors]
