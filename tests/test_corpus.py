import json

import pytest

from chatbot.corpus import CorpusError, CorpusStats, detect_format, join_lccc_spaces, read_dialogues


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
])
def test_detect_format(tmp_path, name, content, expected):
    assert detect_format(write(tmp_path, name, content)) == expected


def test_join_lccc_spaces():
    assert join_lccc_spaces(" 我 用 iPhone 13 ， 你 呢 ？ ") == "我用iPhone 13，你呢？"
