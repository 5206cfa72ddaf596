from pathlib import Path

from chatbot.tokenization import decode_ids, encode_texts, load_tokenizer
from chatbot.data.vocab import corpus_vocab, gb2312_hanzi, main, standard_vocab
from chatbot.layout import SPECIAL_TOKENS

SHIPPED = Path(__file__).resolve().parents[1] / "vocab" / "vocab.txt"


def test_gb2312_has_all_6763_hanzi():
    hanzi = gb2312_hanzi()
    assert len(hanzi) == 6763 and len(set(hanzi)) == 6763
    assert hanzi[:3] == ["啊", "阿", "埃"] and hanzi[-1] == "齄"


def test_shipped_vocab_is_regenerated_byte_for_byte(tmp_path):
    main(["--output", str(tmp_path / "vocab.txt")])
    assert (tmp_path / "vocab.txt").read_bytes() == SHIPPED.read_bytes()


def test_standard_vocab_layout():
    tokens = standard_vocab()
    assert tokens[:7] == SPECIAL_TOKENS
    assert len(tokens) == len(set(tokens)) == 7293
    assert {"a", "##a", "0", "##9", "，", "。", "？", "！", "…", "😀", "##😀"} <= set(tokens)


def test_shipped_vocab_loads_with_every_line():
    tokenizer = load_tokenizer(SHIPPED)
    assert len(tokenizer) == len(SHIPPED.read_text(encoding="utf-8").splitlines()) == 7293
    assert tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(["你", "好", "吗"])
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id,
            tokenizer.sep_token_id) == (0, 1, 2, 3)


def test_mixed_text_round_trips_to_readable_text():
    tokenizer = load_tokenizer(SHIPPED)
    text = "你好！I love Python 3.12，今天28℃😀好开心～"
    ids = encode_texts(tokenizer, [text])[0]
    assert tokenizer.unk_token_id not in ids
    assert decode_ids(tokenizer, ids) == "你好！i love python 3.12，今天28℃😀好开心～"


def test_corpus_vocab_keeps_characters_by_frequency():
    tokens = corpus_vocab(["你好你", "妳好 OK😀", "你"], min_freq=2)
    assert tokens == SPECIAL_TOKENS + ["你", "好"]
    tokens = corpus_vocab(["妳好 OK😀"], min_freq=1)
    assert tokens == SPECIAL_TOKENS + ["k", "o", "好", "妳", "😀", "##k", "##o", "##😀"]


def test_corpus_vocab_tokenizes_traditional_and_emoji(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(corpus_vocab(["妳們好😀", "ok😀"])) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(path)
    ids = encode_texts(tokenizer, ["妳們好😀ok😀"])[0]
    assert decode_ids(tokenizer, ids) == "妳們好😀ok😀"
