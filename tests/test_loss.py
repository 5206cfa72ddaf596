import resource

import pytest
import torch
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

from chatbot.train.allocator import keep_freed_memory
from chatbot.data.dataset import make_collate
from chatbot.layout import IGNORE_INDEX
from chatbot.model.loss import NextTokenLoss, next_token_loss

pytestmark = pytest.mark.transformers_api

EXAMPLES = [[2, 7, 8, 3, 9, 10, 11, 3], [2, 12, 3, 13, 3], [2, 14, 15, 16, 3, 7, 3]]


@pytest.fixture
def batch(tokenizer):
    """Three padded examples, loss on the replies only: IGNORE_INDEX in the middle of rows too."""
    import numpy as np

    return make_collate(tokenizer, loss_on="replies")([np.array(ids) for ids in EXAMPLES])


def test_batch_has_ignored_positions_inside_rows_and_padding(batch):
    labels = batch["labels"]
    assert labels[0].tolist() == [IGNORE_INDEX] * 4 + [9, 10, 11, 3]
    assert labels[1].tolist() == [IGNORE_INDEX] * 3 + [13, 3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]


@pytest.mark.parametrize("dropout", [False, True])
def test_loss_and_gradients_equal_transformers_full_logits_loss(tiny_model, batch, dropout):
    model = tiny_model.train(dropout)
    torch.manual_seed(1)
    expected = model(**batch).loss  # transformers: logits at every position, then its shifted loss
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.manual_seed(1)  # the same dropout masks
    loss = NextTokenLoss(model)(**batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_sum_reduction_is_the_mean_times_the_scored_tokens(tiny_model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        mean = next_token_loss(tiny_model, batch["labels"], **inputs)
        total = next_token_loss(tiny_model, batch["labels"], reduction="sum", **inputs)
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == 8  # 4 + 2 + 2 reply tokens
    assert total.item() == pytest.approx(mean.item() * 8, rel=1e-6)


def test_openai_gpt_models_get_the_same_loss_as_transformers(tokenizer, batch):
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=len(tokenizer), n_positions=32, n_embd=16,
                                                 n_layer=2, n_head=2)).eval()
    with torch.no_grad():
        assert NextTokenLoss(model)(**batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)


@pytest.mark.skipif(not keep_freed_memory(), reason="needs Linux with glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    def faults_allocating_64_mb() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            torch.ones(16 << 20)  # 64 MB, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_allocating_64_mb(), faults_allocating_64_mb()  # the heap grows to hold the block
    assert faults_allocating_64_mb() < 100  # glibc's default: 16 384 per 64 MB block
