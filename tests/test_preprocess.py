import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chatbot.cli import preprocess_main
from chatbot.data.dataset import TokenDataset, load_dataset
from chatbot.data.preprocess import preprocess, window_turns
from chatbot.tokenization import encode_texts

CLS, SEP = 2, 3


def ids_of(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(list(text))


@pytest.mark.parametrize("lengths, max_len, windows", [
    ([2, 3], 10, [(0, 2)]),                   # fits whole: 1 + 3 + 4 = 8
    ([2, 3, 2], 10, [(0, 2), (1, 3)]),        # 11 > 10: two maximal windows
    ([4, 4, 4, 4], 11, [(0, 2), (1, 3), (2, 4)]),
    ([8, 1, 1], 10, [(0, 1), (1, 3)]),        # the long turn can't share a window
    ([1, 1, 1, 1], 100, [(0, 4)]),
])
def test_window_turns(lengths, max_len, windows):
    assert window_turns(lengths, max_len) == windows


def test_preprocess_writes_exact_ids(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("你好\n我很好\n\n今天\n天气\n", encoding="utf-8")
    meta = preprocess([corpus], tmp_path / "enc", tokenizer, max_len=32, progress=False)
    ds = TokenDataset(tmp_path / "enc")
    assert len(ds) == 2 and meta["examples"] == 2 and meta["dtype"] == "uint16"
    assert ds[0].tolist() == [CLS, *ids_of(tokenizer, "你好"), SEP, *ids_of(tokenizer, "我很好"), SEP]
    assert ds[1].tolist() == [CLS, *ids_of(tokenizer, "今天"), SEP, *ids_of(tokenizer, "天气"), SEP]
    assert sorted(os.listdir(tmp_path / "enc")) == ["meta.json", "offsets.npy", "tokens.bin"]
    assert (meta["dialogues"], meta["turns"], meta["tokens"], meta["unk_tokens"]) == (2, 4, 15, 0)


def test_long_dialogue_is_windowed_and_long_turn_truncated(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("你好\n我很好\n谢谢\n\n你好吗你好吗你好吗\n好\n", encoding="utf-8")
    meta = preprocess([corpus], tmp_path / "enc", tokenizer, max_len=8, progress=False)
    ds = TokenDataset(tmp_path / "enc")
    decoded = [tokenizer.convert_ids_to_tokens(ds[i].tolist()) for i in range(len(ds))]
    assert decoded == [
        ["[CLS]", "你", "好", "[SEP]", "我", "很", "好", "[SEP]"],
        ["[CLS]", "我", "很", "好", "[SEP]", "谢", "谢", "[SEP]"],
        ["[CLS]", "你", "好", "吗", "你", "好", "吗", "[SEP]"],
        ["[CLS]", "好", "[SEP]"],
    ]
    assert (meta["windowed_dialogues"], meta["truncated_turns"]) == (2, 1)
    assert all(len(ds[i]) <= 8 for i in range(len(ds)))


def test_text_format_cuts_running_text_into_windows(tmp_path, tokenizer):
    corpus = tmp_path / "novel.txt"
    corpus.write_text("你好吗我很好\n谢谢\n", encoding="utf-8")
    preprocess([corpus], tmp_path / "enc", tokenizer, max_len=6, format="text", progress=False)
    ds = TokenDataset(tmp_path / "enc")
    assert [tokenizer.convert_ids_to_tokens(ds[i].tolist()) for i in range(len(ds))] == [
        ["[CLS]", "你", "好", "吗", "我", "[SEP]"], ["[CLS]", "很", "好", "[SEP]"], ["[CLS]", "谢", "谢", "[SEP]"]]


def test_dialogue_ids_equal_its_turns_encoded_one_by_one(tmp_path, tokenizer):
    # A dialogue is tokenized as one [SEP]-joined string; its ids must be exactly those of the
    # turns encoded separately: word pieces, [UNK]s, and a turn that encodes to nothing dropped.
    turns = ["ok ko", "\x01\x02", "你好！", "很好 ok", "🙂 猫"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(turns) + "\n", encoding="utf-8")
    preprocess([corpus], tmp_path / "enc", tokenizer, max_len=64, progress=False)
    expected = [CLS]
    for ids in encode_texts(tokenizer, turns):
        expected += [*ids, SEP] if ids else []
    assert TokenDataset(tmp_path / "enc")[0].tolist() == expected
    assert expected.count(SEP) == 4 and tokenizer.unk_token_id in expected


def test_workers_give_identical_output(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(["你好\n我很好"] * 3000), encoding="utf-8")
    preprocess([corpus], tmp_path / "one", tokenizer, max_len=32, progress=False)
    preprocess([corpus], tmp_path / "two", tokenizer, max_len=32, workers=2, progress=False)
    for name in ("tokens.bin", "offsets.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_no_usable_dialogue_is_an_error(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("只有一句\n\n\n又一句\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no usable dialogues .* skipped \{'fewer than 2 turns': 2\}"):
        preprocess([corpus], tmp_path / "enc", tokenizer, max_len=32, progress=False)
    assert not (tmp_path / "enc").exists() and os.listdir(tmp_path) == ["c.txt"]


def test_cache_is_reused_and_rebuilt_on_change(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("你好\n我很好\n", encoding="utf-8")
    cache = tmp_path / "cache"
    first = load_dataset(corpus, tokenizer, max_len=32, cache_dir=cache, progress=False)
    mtime = (first.folder / "tokens.bin").stat().st_mtime_ns
    again = load_dataset(corpus, tokenizer, max_len=32, cache_dir=cache, progress=False)
    assert again.folder == first.folder and (again.folder / "tokens.bin").stat().st_mtime_ns == mtime
    corpus.write_text("你好\n我很好\n\n今天\n天气\n", encoding="utf-8")   # edited corpus
    assert len(load_dataset(corpus, tokenizer, max_len=32, cache_dir=cache, progress=False)) == 2
    assert load_dataset(corpus, tokenizer, max_len=16, cache_dir=cache, progress=False).meta["max_len"] == 16


def test_encoded_folder_must_match_vocab_and_max_len(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("你好\n我很好\n", encoding="utf-8")
    preprocess([corpus], tmp_path / "enc", tokenizer, max_len=32, progress=False)
    with pytest.raises(ValueError, match="up to 32 tokens but max_len is 16"):
        load_dataset(tmp_path / "enc", tokenizer, max_len=16)
    meta = json.loads((tmp_path / "enc" / "meta.json").read_text())
    meta["vocab_fingerprint"] = "other"
    (tmp_path / "enc" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another vocabulary"):
        load_dataset(tmp_path / "enc", tokenizer, max_len=32)


def test_cli_summary_and_exit_codes(tmp_path, vocab_file, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('["你好", "我很好"]\n["bad"\n', encoding="utf-8")
    args = [str(corpus), "-o", str(tmp_path / "enc"), "--vocab", str(vocab_file)]
    assert preprocess_main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "c.jsonl:2: malformed JSON" in err and "Traceback" not in err
    assert preprocess_main([*args, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped: malformed record" in err and "[UNK] rate" in err
    assert np.load(tmp_path / "enc" / "offsets.npy").tolist() == [0, 8]


def test_cli_encodes_without_importing_torch(tmp_path, vocab_file):
    # torch is +300 MB of RSS and seconds of start-up that encoding never uses (only --tokenizer MODEL
    # needs it). transformers 5.3 imports it with any tokenizer; there the test checks that chatbot adds
    # nothing to that.
    (tmp_path / "c.txt").write_text("你好\n我很好\n", encoding="utf-8")
    code = ("import sys\nfrom transformers import BertTokenizerFast\nalready = set(sys.modules)\n"
            "from chatbot.cli import preprocess_main\nassert preprocess_main(sys.argv[1:]) == 0\n"
            "print(sorted({'torch', 'chatbot.model.modeling'} & (set(sys.modules) - already)))")
    argv = [str(tmp_path / "c.txt"), "-o", str(tmp_path / "enc"), "--vocab", str(vocab_file), "--quiet"]
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr
    assert np.load(tmp_path / "enc" / "offsets.npy").tolist() == [0, 8]  # [CLS] 你 好 [SEP] 我 很 好 [SEP]


def test_cli_builds_vocab_from_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("妳好😀\n妳們好\n", encoding="utf-8")
    out = tmp_path / "my_vocab.txt"
    assert preprocess_main([str(corpus), "-o", str(tmp_path / "enc"), "--vocab-out", str(out),
                            "--quiet"]) == 0
    assert json.loads((tmp_path / "enc" / "meta.json").read_text())["unk_tokens"] == 0
    assert "妳" in out.read_text(encoding="utf-8").split("\n")


def test_cli_rejects_bad_flag_values(capsys):
    with pytest.raises(SystemExit) as e:
        preprocess_main(["x.txt", "-o", "out", "--max-len", "0"])
    assert e.value.code == 2 and "--max-len" in capsys.readouterr().err
