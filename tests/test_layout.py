import numpy as np
import pytest

from chatbot.layout import (IGNORE_INDEX, SPECIAL_TOKENS, join_turns, label_mask, reverse_turns,
                            speaker_token_ids, speaker_type_ids, split_at, split_turns)

CLS, SEP = 2, 3
TURNS = [[7, 8], [9], [7]]
IDS = [CLS, 7, 8, SEP, 9, SEP, 7, SEP]


def test_join_and_split_are_inverse():
    assert join_turns(TURNS, cls_id=CLS, sep_id=SEP) == IDS
    assert split_turns(IDS, SEP) == TURNS
    assert split_turns(reverse_turns(np.array(IDS), SEP).tolist(), SEP) == TURNS[::-1]


def test_split_at():
    assert split_at([7, SEP, 8, 9, SEP], SEP) == [[7], [8, 9], []]
    assert split_at([SEP, SEP], SEP) == [[], [], []] and split_at([], SEP) == [[]]


@pytest.mark.parametrize("loss_on, expected", [
    ("all", [0, 1, 1, 1, 1, 1, 1, 1]),
    ("replies", [0, 0, 0, 0, 1, 1, 1, 1]),
    ("last", [0, 0, 0, 0, 0, 0, 1, 1]),
])
def test_label_mask_counts_each_turns_sep_and_never_cls(loss_on, expected):
    assert label_mask(np.array(IDS), SEP, loss_on).astype(int).tolist() == expected


def test_label_mask_names_the_allowed_values():
    with pytest.raises(ValueError, match="loss_on must be one of all, replies, last, got 'first'"):
        label_mask(np.array(IDS), SEP, "first")


def test_speaker_ids_alternate_from_the_vocabulary():
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    speakers = speaker_token_ids(vocab)
    assert speakers == (5, 6)
    assert speaker_type_ids(IDS[:-1], sep_id=SEP, speaker_ids=speakers) == ([5, 5, 5, 5, 6, 6, 5], 5)
    with pytest.raises(ValueError, match=r"lacks \[speaker2\]"):
        speaker_token_ids({"[speaker1]": 5})


def test_ignore_index_is_torchs_default():
    import inspect

    import torch.nn.functional as F

    assert IGNORE_INDEX == inspect.signature(F.cross_entropy).parameters["ignore_index"].default
