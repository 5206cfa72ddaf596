import pytest

from chatbot.tokenization import decode_ids, encode_texts, hidden_token_ids, load_tokenizer
from conftest import TINY_VOCAB

pytestmark = pytest.mark.transformers_api


def test_tiny_tokenizer_has_every_line(tokenizer):
    assert len(tokenizer) == len(TINY_VOCAB) == 22
    assert tokenizer.convert_ids_to_tokens(encode_texts(tokenizer, ["你好吗"])[0]) == ["你", "好", "吗"]


def test_load_from_folder_equals_load_from_file(tokenizer, vocab_file):
    assert load_tokenizer(vocab_file.parent).get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("tokens, text", [
    (["你", "好", "吗"], "你好吗"),
    (["o", "##k", "o", "##k"], "ok ok"),           # a space between ASCII words
    (["你", "o", "##k", "！"], "你ok！"),          # none next to hanzi or punctuation
    (["[CLS]", "你", "[SEP]", "[PAD]", "好", "[speaker1]"], "你好"),  # specials dropped
])
def test_decode_ids(tokenizer, tokens, text):
    assert decode_ids(tokenizer, tokenizer.convert_tokens_to_ids(tokens)) == text


def test_hidden_ids_cover_specials_and_unused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused1]", "你"]) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(path)
    assert hidden_token_ids(tokenizer) == {0, 1, 2, 3, 4, 5}
    assert decode_ids(tokenizer, [2, 5, 6, 3]) == "你"


def test_missing_vocab_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_tokenizer(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_vocab_without_specials_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("你\n好\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[PAD\], \[UNK\], \[CLS\], \[SEP\]"):
        load_tokenizer(path)
