import numpy as np
import pytest
import torch

from chatbot.data.dataset import LengthGroupedBatchSampler, make_collate, padding_fraction, split_holdout
from chatbot.layout import IGNORE_INDEX, reverse_turns, turn_index

X = IGNORE_INDEX
# [CLS]=2 [SEP]=3 [PAD]=0; 7..9 are ordinary tokens
A = np.array([2, 7, 8, 3, 9, 3, 7, 3])   # three turns: [7 8] [9] [7]
B = np.array([2, 9, 3, 8, 3])


@pytest.mark.parametrize("loss_on, labels_a, labels_b", [
    ("all", [X, 7, 8, 3, 9, 3, 7, 3], [X, 9, 3, 8, 3, X, X, X]),
    ("replies", [X, X, X, X, 9, 3, 7, 3], [X, X, X, 8, 3, X, X, X]),
    ("last", [X, X, X, X, X, X, 7, 3], [X, X, X, 8, 3, X, X, X]),
])
def test_collate_pads_and_masks(tokenizer, loss_on, labels_a, labels_b):
    batch = make_collate(tokenizer, loss_on=loss_on)([A, B])
    assert batch["input_ids"].tolist() == [A.tolist(), [2, 9, 3, 8, 3, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert batch["labels"].tolist() == [labels_a, labels_b]
    assert "token_type_ids" not in batch


def test_speaker_ids_alternate_by_turn(tokenizer):
    batch = make_collate(tokenizer, speaker_ids=True)([A, B])
    s1, s2 = tokenizer.convert_tokens_to_ids(["[speaker1]", "[speaker2]"])
    assert batch["token_type_ids"].tolist() == [[s1, s1, s1, s1, s2, s2, s1, s1],
                                                [s1, s1, s1, s2, s2, 0, 0, 0]]


def test_turn_index():
    assert turn_index(A, 3).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]


def test_model_shifts_labels_so_position_t_predicts_t_plus_1(tokenizer, tiny_model):
    batch = make_collate(tokenizer)([A])
    out = tiny_model(**batch)
    logits = out.logits[0, :-1]   # predictions made at positions 0..T-2 ...
    targets = torch.tensor(A[1:])  # ... are scored against tokens 1..T-1
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(logits, targets))


def test_length_grouped_sampler_cuts_padding_and_covers_every_index():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=1, group_size=16)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000)) and len(batches) == len(sampler) == 125
    random_batches = [list(range(i, i + 8)) for i in range(0, 1000, 8)]
    assert padding_fraction(lengths, batches) < 0.1 < padding_fraction(lengths, random_batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches


def test_sampler_splits_equally_across_ranks():
    lengths = np.arange(1, 22)  # 21 examples, batch 2 -> 11 batches -> 5 per rank
    parts = [list(LengthGroupedBatchSampler(lengths, 2, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 5
    assert not {i for b in parts[0] for i in b} & {i for b in parts[1] for i in b}


def test_unshuffled_sampler_sorts_by_length():
    batches = list(LengthGroupedBatchSampler(np.array([5, 1, 3, 2]), 2, shuffle=False))
    assert batches == [[1, 3], [2, 0]]


def test_reverse_turns_for_the_backward_model(tokenizer):
    assert reverse_turns(A, 3).tolist() == [2, 7, 3, 9, 3, 7, 8, 3]
    batch = make_collate(tokenizer, reverse=True, loss_on="last")([A])
    assert batch["labels"].tolist() == [[X, X, X, X, X, 7, 8, 3]]


def test_split_holdout_is_seeded_and_disjoint():
    class Fake:
        lengths = np.arange(10)

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return i

    train, valid = split_holdout(Fake(), 0.2, seed=0)
    assert len(train) == 8 and len(valid) == 2
    assert sorted([train[i] for i in range(8)] + [valid[i] for i in range(2)]) == list(range(10))
    assert split_holdout(Fake(), 0.2, seed=0)[1].indices.tolist() == valid.indices.tolist()
    assert valid.lengths.tolist() == valid.indices.tolist()
