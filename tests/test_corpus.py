import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot.data.corpus import (
    MAX_LINE_BYTES,
    MAX_TURN_CHARS,
    CorpusError,
    CorpusStats,
    detect_format,
    join_lccc_spaces,
    read_dialogues,
)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_txt_tolerates_bom_crlf_trailing_space_and_extra_blank_lines(tmp_path):
    path = write(tmp_path, "c.txt", "\ufeff你好 \r\n在的\r\n\r\n\r\n\r\n吃了吗\r\n吃了\t\r\n\r\n\r\n")
    stats = CorpusStats()
    assert list(read_dialogues(path, stats=stats)) == [["你好", "在的"], ["吃了吗", "吃了"]]
    assert (stats.dialogues, stats.turns, stats.chars) == (2, 4, 9)


def test_single_turn_dialogues_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, "c.txt", "独白\n\n你好\n你好\n\n又一句")
    stats = CorpusStats()
    assert list(read_dialogues(path, stats=stats)) == [["你好", "你好"]]
    assert stats.skipped == {"fewer than 2 turns": 2}


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, "c.txt", "你好\n在的\n\n".encode() + b"\xff\xfe\n" + "好\n".encode())
    with pytest.raises(CorpusError, match=r"c\.txt:4: not valid UTF-8"):
        list(read_dialogues(path))
    stats = CorpusStats()
    assert list(read_dialogues(path, skip_bad=True, stats=stats)) == [["你好", "在的"]]
    assert stats.skipped == {"invalid UTF-8": 1}


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="empty"):
        list(read_dialogues(write(tmp_path, "c.txt", "")))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(read_dialogues(tmp_path / "nope.txt"))


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/null"), reason="needs POSIX")
def test_a_corpus_must_be_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # nobody writes to it: opening it would block for ever
    (tmp_path / "folder").mkdir()
    saved = ("a corpus is read several times from its start, so save it to a file first "
             "(e.g. zcat corpus.gz > corpus.txt)")
    for path, message in [(tmp_path / "folder", "not a file but a folder; name a corpus file in it"),
                          (tmp_path / "fifo", f"not a regular file but a pipe (FIFO); {saved}"),
                          (Path("/dev/null"), f"not a regular file but a character device; {saved}")]:
        with pytest.raises(CorpusError) as e:  # before: "corpus not found" for each
            list(read_dialogues(path))
        assert str(e.value) == f"{path}: {message}"


def test_jsonl_lists_and_objects(tmp_path):
    lines = [json.dumps(["你好", " 在 "]), "", json.dumps({"dialog": ["a", "b"]}),
             json.dumps({"conversation": ["c", "d"]}), json.dumps({"turns": ["e", "", "f"]})]
    path = write(tmp_path, "c.jsonl", "\n".join(lines))
    assert list(read_dialogues(path)) == [["你好", "在"], ["a", "b"], ["c", "d"], ["e", "f"]]


@pytest.mark.parametrize("line, message", [
    ('["a", "b"', "c.jsonl:2: malformed JSON"),
    ('{"text": "a"}', "c.jsonl:2: object has none of the keys"),
    ('["a", 3]', "c.jsonl:2: wrong type"),
])
def test_jsonl_bad_lines(tmp_path, line, message):
    path = write(tmp_path, "c.jsonl", '["x", "y"]\n' + line + "\n")
    with pytest.raises(CorpusError, match=message):
        list(read_dialogues(path))
    stats = CorpusStats()
    assert list(read_dialogues(path, skip_bad=True, stats=stats)) == [["x", "y"]]
    assert stats.skipped == {"malformed record": 1}


def test_lccc_splits_and_spaces(tmp_path):
    data = {"train": [["你 好 ， 我 喜 欢 NBA", "我 也 是 hello world"]], "valid": [["a", "b"]]}
    path = write(tmp_path, "lccc.json", json.dumps(data, ensure_ascii=False))
    assert list(read_dialogues(path)) == [["你好，我喜欢NBA", "我也是hello world"]]
    assert list(read_dialogues(path, split="valid")) == [["a", "b"]]
    with pytest.raises(CorpusError, match="no split 'test'; it has train, valid"):
        list(read_dialogues(path, split="test"))


def test_lccc_bare_list_and_bad_record(tmp_path):
    path = write(tmp_path, "lccc.json", json.dumps([["a", "b"], "oops"]))
    with pytest.raises(CorpusError, match="dialogue #1"):
        list(read_dialogues(path))
    assert list(read_dialogues(path, skip_bad=True)) == [["a", "b"]]


def test_text_format_yields_passages(tmp_path):
    path = write(tmp_path, "novel.txt", "第一章\n\n  他走了。\n")
    assert list(read_dialogues(path, format="text")) == [["第一章"], ["他走了。"]]


@pytest.mark.parametrize("name, content, expected", [
    ("a.txt", "你好\n在\n", "txt"),
    ("a.jsonl", "[]", "jsonl"),
    ("a.json", "{}", "lccc"),
    ("a.data", '["你好", "在"]\n', "jsonl"),
    ("a.data", '{"dialog": ["a"]}\n', "jsonl"),
    ("a.data", '[["你好", "在"]]\n', "lccc"),
    ("a.data", '{\n  "train": []\n}', "lccc"),
    ("a.data", '{"train": [\n["a", "b"]]}', "lccc"),
    ("a.txt", '["你好", "在"]\n', "txt"),
    ("a.data", "[微笑]你好\n在的\n", "txt"),
    ("a.data", "{好吧}\n嗯\n", "txt"),
    # json.loads died with RecursionError on this line; the LCCC reader then says where it nests too deep
    pytest.param("deep", "[" * 100_000 + "]" * 100_000, "lccc", id="nested-100000-deep"),
])
def test_detect_format(tmp_path, name, content, expected):
    assert detect_format(write(tmp_path, name, content)) == expected


def test_lccc_nested_deeper_than_the_format_is_refused_while_streaming(tmp_path):
    # ijson built a path per level: 10**5 levels took ~10 GB (tests/test_faults.py runs that, memory-bound).
    path = write(tmp_path, "deep.json", '{"train": [["a", "b"], [[[["c"]]]]]}')
    reader = read_dialogues(path)
    assert next(reader) == ["a", "b"]
    with pytest.raises(CorpusError) as e:
        next(reader)
    assert str(e.value) == (f"{path}: JSON nested deeper than 4 levels within lines 1-1 (bytes 0-36); "
                            'an LCCC corpus is {"train": [[utterance, ...], ...]} or [[utterance, ...], '
                            "...]: fix the file, or give its format with --format")
    # One level too deep is still one bad dialogue, reported or skipped as before.
    path = write(tmp_path, "one-more.json", '{"train": [["a", "b"], [["c"]]]}')
    with pytest.raises(CorpusError, match="dialogue #1 \\(0-based\\) is not a list of strings"):
        list(read_dialogues(path))
    assert list(read_dialogues(path, skip_bad=True)) == [["a", "b"]]


def test_jsonl_line_nested_deeper_than_the_format_is_a_bad_record(tmp_path):
    strings = ["[[[[[微笑]]]]]", '{"{{{{{\\']  # brackets, a quote and a backslash inside strings do not nest
    brackets_in_strings = json.dumps(strings, ensure_ascii=False)
    deep = "[" * 100_000 + "]" * 100_000  # json.loads died with RecursionError
    path = write(tmp_path, "deep.jsonl", f'["a", "b"]\n{deep}\n{brackets_in_strings}')
    with pytest.raises(CorpusError) as e:
        list(read_dialogues(path))
    assert str(e.value) == (f"{path}:2: nested deeper than 4 levels; expected a JSON list of strings or an "
                            "object with a dialog/conversation/turns list (or pass --skip-bad)")
    stats = CorpusStats()
    assert list(read_dialogues(path, skip_bad=True, stats=stats)) == [["a", "b"], strings]
    assert stats.skipped == {"malformed record": 1}


def test_join_lccc_spaces():
    assert join_lccc_spaces(" 我 用 iPhone 13 ， 你 呢 ？ ") == "我用iPhone 13，你呢？"


def test_a_huge_line_is_cut_and_a_huge_passage_split_on_whole_characters(tmp_path):
    line = "你好吗" * 100_000  # 900 KB, more than MAX_LINE_BYTES, which is not a multiple of 3
    path = write(tmp_path, "c.txt", f"在吗\n{line}\n\n谢谢\n不客气")
    stats = CorpusStats()
    assert list(read_dialogues(path, stats=stats)) == [["在吗", line[:MAX_TURN_CHARS]], ["谢谢", "不客气"]]
    assert stats.cut_turns == 1
    passages = [p for (p,) in read_dialogues(path, format="text")]
    assert passages[0] == "在吗" and "".join(passages[1:-2]) == line and passages[-2:] == ["谢谢", "不客气"]
    assert max(len(p.encode()) for p in passages) <= MAX_LINE_BYTES


def test_lccc_is_streamed_with_bom_and_malformed_json_names_file_and_lines(tmp_path):
    path = write(tmp_path, "lccc.json", b"\xef\xbb\xbf" + '{"train": [["你 好", "在 的"],\n ["a", x]]}'.encode())
    reader = read_dialogues(path)
    assert next(reader) == ["你好", "在的"]  # the first dialogue comes before the error further on
    with pytest.raises(CorpusError, match=r"lccc.json: malformed JSON \(lexical error: invalid char in "
                                          r"json text, near .*\) within lines 1-2 \(bytes 3-49\)"):
        next(reader)
    with pytest.raises(CorpusError, match="split 'train' should be a list of dialogues, got dict"):
        list(read_dialogues(write(tmp_path, "d.json", '{"train": {"a": 1}}')))
    with pytest.raises(CorpusError, match="expected a list of dialogues, got str"):
        list(read_dialogues(write(tmp_path, "s.json", '"x"')))


# Peak RSS growth (MB) of each step, in a fresh process. VmHWM, not ru_maxrss: Linux carries the parent's
# high-water mark (pytest's, hundreds of MB) into a spawned child's ru_maxrss, which would hide any growth
# below it.
MEMORY_CHILD = r"""
import json, sys
from chatbot.data.corpus import read_dialogues
from chatbot.data.preprocess import preprocess
from chatbot.tokenization import load_tokenizer
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
tmp, vocab = sys.argv[1], sys.argv[2]
tok = load_tokenizer(vocab)
preprocess([tmp + "/normal.txt"], tmp + "/a", tok, max_len=64, progress=False)
base = peak()
preprocess([tmp + "/huge-line.txt"], tmp + "/b", tok, max_len=64, progress=False)
huge = peak()
n = sum(1 for _ in read_dialogues(tmp + "/lccc.json"))
print(json.dumps({"huge_line_mb": huge - base, "lccc_mb": peak() - huge, "lccc_dialogues": n}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_memory_stays_flat_for_a_10_mb_line_and_a_big_lccc_file(tmp_path, vocab_file):
    (tmp_path / "normal.txt").write_text("你好\n我很好\n\n谢谢\n不客气\n", encoding="utf-8")
    (tmp_path / "huge-line.txt").write_text("你好\n" + "我很好" * 1_200_000 + "\n", encoding="utf-8")  # 10.8 MB
    with open(tmp_path / "lccc.json", "w", encoding="utf-8") as f:  # 24 MB: json.loads took +80 MB
        f.write('{"train": [')
        f.write(",\n".join(json.dumps(["你 好 吗 " * 8, "我 很 好 " * 10, "谢 谢"], ensure_ascii=False)
                            for _ in range(100_000)))
        f.write("]}")
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path), str(vocab_file)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout
    growth = json.loads(out)
    assert growth["lccc_dialogues"] == 100_000
    assert growth["huge_line_mb"] < 30 and growth["lccc_mb"] < 30, growth  # before: +1 660 MB and +80 MB
