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


def load_error(path) -> str:
    with pytest.raises(ValueError) as e:
        load_tokenizer(path)
    return str(e.value)


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer):
    """A folder of tokenizer files as a model folder holds them (tokenizer.json, tokenizer_config.json)."""
    tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_damaged_tokenizer_file_is_named(tokenizer_dir, name):
    (tokenizer_dir / name).write_text('{"model": ', encoding="utf-8")
    assert load_error(tokenizer_dir) == (
        f"{tokenizer_dir / name} is not valid JSON (Expecting value: line 1 column 11 (char 10)); it is "
        "damaged: copy it again from where the model came from")


def test_a_bpe_tokenizer_json_is_refused_not_misread_as_wordpiece(tokenizer_dir):
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "你", "好"])}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    bpe.save(str(tokenizer_dir / "tokenizer.json"))
    assert load_error(tokenizer_dir) == (
        f'{tokenizer_dir / "tokenizer.json"}: model.type is "BPE", but chatbot reads BERT WordPiece '
        'tokenizers ("WordPiece", as bert-base-chinese and chatbot-train write them): use the tokenizer the '
        "model was trained with, or a vocab.txt (python -m chatbot.data.vocab builds one)")


def test_a_tokenizer_json_missing_a_field_names_the_files(tokenizer_dir):
    (tokenizer_dir / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "vocab": {}}}')
    assert load_error(tokenizer_dir) == (
        f"{tokenizer_dir / 'tokenizer.json'}, {tokenizer_dir / 'tokenizer_config.json'}: not a BERT "
        "tokenizer that can be read (it lacks the field 'added_tokens'); a vocab.txt is one UTF-8 token a "
        "line: copy the files again, or pass the tokenizer the model was trained with")


def test_a_binary_vocab_file_is_named(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(bytes(range(128, 256)))
    assert load_error(path) == (
        f"{path}: not a BERT tokenizer that can be read (Error while initializing WordPiece: stream did not "
        "contain valid UTF-8); a vocab.txt is one UTF-8 token a line: copy the files again, or pass the "
        "tokenizer the model was trained with")
