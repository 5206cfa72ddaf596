import json

import pytest

from chatbot.data.dataset import TokenDataset
from chatbot.data.encoded import is_encoded_dataset, is_fresh, read_meta, unk_rate
from chatbot.data.preprocess import preprocess
from chatbot.tokenization import vocab_fingerprint


@pytest.fixture
def encoded(tmp_path, tokenizer):
    """(corpus, folder): two dialogues encoded at max_len 32."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("你好\n我很好\n\n今天\n天气\n", encoding="utf-8")
    preprocess([corpus], tmp_path / "enc", tokenizer, max_len=32, progress=False)
    return corpus, tmp_path / "enc"


def test_read_meta_gives_what_preprocess_wrote(encoded):
    meta = read_meta(encoded[1])
    assert (meta["format_version"], meta["max_len"], meta["examples"], meta["tokens"]) == (1, 32, 2, 15)
    assert unk_rate(meta) == 0.0 and unk_rate({"unk_tokens": 3, "tokens": 12}) == 0.25
    assert unk_rate({"unk_tokens": 0, "tokens": 0}) == 0.0


@pytest.mark.parametrize("text, cause", [
    ('{"format_version": 1', "Expecting ',' delimiter: line 1 column 21 (char 20)"),
    ("[1, 2]", "not a JSON object"),
    (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_a_damaged_meta_json_is_named(encoded, text, cause):
    meta = encoded[1] / "meta.json"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    message = f"{meta} is damaged ({cause}); run chatbot-preprocess again"
    for read in (read_meta, TokenDataset):
        with pytest.raises(ValueError) as e:
            read(encoded[1])
        assert str(e.value) == message
    assert not is_encoded_dataset(encoded[1])


def test_missing_files_and_another_format_version_are_named(encoded):
    folder = encoded[1]
    (folder / "tokens.bin").unlink()
    (folder / "offsets.npy").unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_meta(folder)
    assert str(e.value) == (f"{folder} is not an encoded dataset: missing offsets.npy, tokens.bin "
                            "(make one with chatbot-preprocess)")
    (folder / "tokens.bin").touch()
    (folder / "offsets.npy").touch()
    (folder / "meta.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ValueError) as e:
        read_meta(folder)
    assert str(e.value) == (f"{folder} was written by another chatbot version (format 0, expected 1); "
                            "run chatbot-preprocess again")
    assert is_encoded_dataset(folder)  # still ours to replace: it is only older


def test_a_folder_with_other_files_is_not_an_encoded_dataset(encoded, tmp_path):
    assert is_encoded_dataset(encoded[1])
    (encoded[1] / "notes.txt").write_text("mine")
    assert not is_encoded_dataset(encoded[1]) and not is_encoded_dataset(tmp_path / "absent")


def test_is_fresh_until_the_corpus_vocabulary_or_max_len_change(encoded, tokenizer):
    corpus, folder = encoded
    fingerprint = vocab_fingerprint(tokenizer)
    assert is_fresh(folder, [corpus], vocab_fingerprint=fingerprint, max_len=32)
    assert not is_fresh(folder, [corpus], vocab_fingerprint=fingerprint, max_len=16)
    assert not is_fresh(folder, [corpus], vocab_fingerprint="other", max_len=32)
    corpus.write_text("你好\n我很好\n", encoding="utf-8")
    assert not is_fresh(folder, [corpus], vocab_fingerprint=fingerprint, max_len=32)
