import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from chatbot.bot import ChatBot
from chatbot.cli import chat_main
from chatbot.conversation import Conversation
from chatbot.repl import Session, parse_settings, prompt_reader, run_repl
from chatbot.options import SamplingOptions


@pytest.fixture
def session(tiny_model_dir, tmp_path):
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=6)
    return Session(bot, model_name="tiny", log_dir=tmp_path / "logs", seed=7)


def console() -> Console:
    return Console(file=io.StringIO(), color_system=None, width=200)


def chat(session: Session, lines: list[str]) -> str:
    """Run the REPL on `lines` (then end of input) and return what it printed."""
    feed = iter(lines)

    def read_line() -> str:
        line = next(feed, None)
        if line is None:
            raise EOFError
        if line == "^C":
            raise KeyboardInterrupt
        return line

    out = console()
    run_repl(session, read_line, out)
    return out.file.getvalue()


def test_messages_get_streamed_replies_and_are_remembered(session):
    text = chat(session, ["你好", "谢谢"])
    history = session.conversation.history
    assert len(history) == 4 and history[0::2] == ["你好", "谢谢"]
    assert f"bot › {history[1]}\n" in text and f"bot › {history[3]}\n" in text
    assert [t["user"] for t in session.transcript] == ["你好", "谢谢"]


def test_commands(session, tmp_path):
    text = chat(session, ["/help", "你好", "/history", "/set temperature=0 top_k=3 penalize_context=on",
                          "/set top_p=2", "/set", "/retry", "/save " + str(tmp_path / "t.json"), "/reset",
                          "/history", "/quit", "not read"])
    assert "/retry" in text and "sample the last reply again" in text
    assert "▸   1  you: 你好\n▸   2  bot: " in text
    assert "temperature=0.0 top_k=3 top_p=1.0" in text and "penalize_context=True" in text
    assert "error: top_p must be a number in [0, 1] (1 = off), got 2.0" in text
    assert "transcript saved to" in text and "conversation forgotten" in text and "no history yet" in text
    assert session.conversation.history == []
    saved = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert saved["model"] == "tiny" and saved["settings"]["temperature"] == 1.0  # as the session started
    assert saved["turns"][1] == {"event": "set", "options": {"temperature": 0.0, "top_k": 3,
                                                             "penalize_context": True}}
    assert saved["settings"]["max_history"] == 3 and saved["settings"]["seed"] == 7
    assert [(t.get("user"), t.get("retry")) for t in saved["turns"]] == [("你好", None), (None, None),
                                                                         ("你好", True)]
    assert session.transcript[-1] == {"event": "reset"}
    assert "not read" not in json.dumps(session.transcript, ensure_ascii=False)


def test_retry_with_nothing_to_retry(session):
    assert "nothing to retry yet" in chat(session, ["/retry"])


def test_same_seed_same_session(tiny_model_dir, tmp_path):
    def replies():
        bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=6)
        s = Session(bot, model_name="tiny", seed=3)
        chat(s, ["你好", "谢谢"])
        return s.conversation.history

    assert replies() == replies()


def test_ctrl_c_at_the_prompt_clears_the_line_and_during_a_reply_stops_it(session):
    def interrupted(text, history, **options):
        yield "半"
        raise KeyboardInterrupt

    session.conversation = Conversation(interrupted, session.bot.settings)
    text = chat(session, ["^C", "你好", "/history"])
    assert "bot › 半 (stopped; this exchange is forgotten)" in text
    assert "no history yet" in text
    assert session.transcript == [{"user": "你好", "bot": "半", "interrupted": True}]


def test_prompt_toolkit_session_with_pipe_input(session, tmp_path):
    history_file = tmp_path / "hist" / "input_history"
    with create_pipe_input() as pipe:
        pipe.send_text("你好\n\x03/history\n\x04")  # a message, Ctrl-C, a command, Ctrl-D
        text = chat_with_reader(session, prompt_reader(history_file, input=pipe, output=DummyOutput()))
    assert "bot › " in text and "1  you: 你好" in text
    assert "你好" in history_file.read_text(encoding="utf-8")


def chat_with_reader(session, read_line) -> str:
    out = console()
    run_repl(session, read_line, out)
    return out.file.getvalue()


def test_parse_settings_types_values_by_the_current_option():
    assert parse_settings(["top_k=3", "top_p=0.5", "penalize_context=yes"], SamplingOptions()) == {
        "top_k": 3, "top_p": 0.5, "penalize_context": True}
    with pytest.raises(ValueError, match="top_k must be an integer, got '0.5'"):
        parse_settings(["top_k=0.5"], SamplingOptions())
    with pytest.raises(ValueError, match="expected name=value with name one of temperature, .*got 'temp'"):
        parse_settings(["temp"], SamplingOptions())


def test_transcript_records_each_set_where_it_happened(session, tmp_path):
    chat(session, ["你好", "/set min_new_tokens=5", "谢谢", "/set min_new_tokens=5", "/set top_p=2",
                   "/set min_new_tokens=1 top_k=2", "/history", "今天"])
    saved = json.loads(session.save(tmp_path / "t.json").read_text(encoding="utf-8"))
    assert (saved["settings"]["min_new_tokens"], saved["settings"]["top_k"]) == (1, 8)
    assert [t.get("event") or t["user"] for t in saved["turns"]] == ["你好", "set", "谢谢", "set", "今天"]
    # a /set that changes nothing, or fails, is not an event
    assert saved["turns"][1] == {"event": "set", "options": {"min_new_tokens": 5}}
    assert saved["turns"][3] == {"event": "set", "options": {"min_new_tokens": 1, "top_k": 2}}
    assert len(session.turns()) == 6  # the events are not turns of the conversation


def test_help_lists_the_slash_commands(capsys):
    with pytest.raises(SystemExit):
        chat_main(["--help"])
    out = capsys.readouterr().out
    commands = [line for line in out[out.index("Commands while chatting:"):].splitlines() if line[2:3] == "/"]
    assert [line.split()[0] for line in commands] == ["/help", "/reset", "/history", "/set", "/save",
                                                      "/retry", "/quit"]
    assert "  /retry   sample the last reply again" in commands


def test_piped_stdin_gives_one_reply_per_line_and_a_transcript(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n\n谢谢\n"))
    code = chat_main(["--model", str(tiny_model_dir), "--device", "cpu", "--seed", "1", "--max-len", "6",
                      "--log-dir", str(tmp_path / "logs")])
    out = capsys.readouterr()
    assert code == 0
    lines = out.out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # reply, empty line kept, reply, end
    assert lines[0] and lines[2] and "›" not in out.out and "\x1b" not in out.out
    (transcript,) = (tmp_path / "logs").glob("chat-*.json")
    assert f"transcript saved to {transcript}" in out.err
    turns = json.loads(transcript.read_text(encoding="utf-8"))["turns"]
    assert turns == [{"user": "你好", "bot": lines[0]}, {"user": "谢谢", "bot": lines[2]}]


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])  # stdin's decoding: UTF-8 locale, C locale
def test_piped_lines_that_are_not_utf8_are_answered_with_u_fffd(errors, tiny_model_dir, tmp_path, monkeypatch,
                                                                 capsys):
    stdin = io.TextIOWrapper(io.BytesIO("你好\n".encode() + b"\xff\xed\xa0\x80\n" + "谢谢\n".encode()),
                             encoding="utf-8", errors=errors)
    monkeypatch.setattr(sys, "stdin", stdin)
    code = chat_main(["--model", str(tiny_model_dir), "--device", "cpu", "--seed", "1", "--max-len", "6",
                      "--log-dir", str(tmp_path / "logs")])
    out = capsys.readouterr()
    assert code == 0, out.err
    replies = out.out.split("\n")
    assert len(replies) == 4 and all(replies[:3]) and replies[3] == ""
    (transcript,) = (tmp_path / "logs").glob("chat-*.json")
    turns = json.loads(transcript.read_text(encoding="utf-8"))["turns"]
    # A bad byte and a UTF-8-encoded surrogate (ED A0 80) each read as U+FFFD, as Python's "replace" reads them.
    assert [t["user"] for t in turns] == ["你好", "\ufffd" * 4, "谢谢"]


def test_help_and_flag_checks_do_not_import_torch():
    code = ("import sys\nfrom chatbot.cli import chat_parser\nchat_parser().parse_args(['--top-p', '0.5'])\n"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        chat_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: chatbot-chat")
    for flag in ["--model", "--device", "--temperature", "--top-k", "--top-p", "--repetition-penalty",
                 "--no-repeat-ngram", "--min-len", "--max-len", "--max-history", "--seed", "--mmi-model",
                 "--candidates", "--log-dir"]:
        assert flag in out


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-1"], "argument --temperature: temperature must be a number >= 0"),
    (["--top-p", "1.5"], "argument --top-p: top_p must be a number in [0, 1]"),
    (["--top-k", "x"], "argument --top-k: expected an integer, got 'x'"),
    (["--max-history", "0"], "argument --max-history: must be >= 1, got 0"),
    (["--candidates", "3"], "--candidates 3 needs --mmi-model DIR"),
    (["--min-len", "30", "--max-len", "5"], "--min-len (30) must be <= --max-len (5)"),
])
def test_bad_flag_value_exits_2_naming_the_flag_before_loading(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        chat_main(["--model", str(tmp_path / "absent"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "model folder" not in err


def test_missing_model_folder_exits_2_with_how_to_make_one(tmp_path, capsys):
    assert chat_main(["--model", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model folder not found: {tmp_path / 'nope'}")
    assert "chatbot-train" in err


def test_history_marks_the_turns_the_bot_sees_and_escapes_control_characters(session):
    text = chat(session, ["你好", "\x1b[2J\x1b]0;owned\x07谢谢", "今天", "/history"])
    assert "\x1b" not in text and "\x07" not in text
    shown = text[text.index("/reset"):].splitlines()  # the header names /reset, then one line per turn
    turns = [line for line in shown if line.strip()[:1] in "▸0123456789"]
    assert len(turns) == 6 and not any(line.startswith("you ›") for line in turns)
    assert "\\x1b[2J\\x1b]0;owned\\x07谢谢" in turns[2]
    # max_history 3: the 2 newest turns, with the next message
    assert [line.startswith("▸") for line in turns] == [False] * 4 + [True] * 2
    assert turns[-2].endswith("今天") and session.conversation.history[-2] == "今天"


def test_save_to_an_unwritable_path_reports_and_the_chat_goes_on(session, tmp_path):
    (tmp_path / "a-file").write_text("mine", encoding="utf-8")
    text = chat(session, ["你好", f"/save {tmp_path / 'a-file' / 't.json'}", f"/save {tmp_path / 'a-file'}",
                          "谢谢"])
    assert text.count("error: cannot save the transcript") == 2 and "exists" in text
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "mine"  # never overwritten
    assert [t["user"] for t in session.transcript] == ["你好", "谢谢"]


def test_transcripts_are_utf8_unique_per_session_and_mark_retries(tiny_model_dir, tmp_path):
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=4)
    first, second = (Session(bot, model_name="tiny", log_dir=tmp_path / "logs") for _ in range(2))
    second.started = first.started  # two sessions started in the same second
    chat(first, ["你好", "/retry"])
    chat(second, ["谢谢"])
    paths = [first.save(), second.save(), first.save()]
    assert paths[0] == paths[2] != paths[1] and sorted((tmp_path / "logs").iterdir()) == sorted(paths[:2])
    raw = paths[0].read_text(encoding="utf-8")
    assert '"user": "你好"' in raw and "\\u" not in raw
    assert [t.get("retry", False) for t in json.loads(raw)["turns"]] == [False, True]


def test_transcripts_go_to_the_per_user_data_folder_and_piped_chats_save_none(tiny_model_dir, tmp_path,
                                                                             monkeypatch, capsys):
    from chatbot.repl import default_transcript_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_transcript_dir() == tmp_path / "data" / "chatbot" / "transcripts"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n"))
    assert chat_main(["--model", str(tiny_model_dir), "--device", "cpu", "--max-len", "4"]) == 0
    assert "transcript" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-model"]  # no chat_logs/, no data/


def test_an_unwritable_log_dir_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("mine", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n"))
    assert chat_main(["--model", str(tmp_path / "absent"), "--log-dir", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --log-dir {tmp_path / 'a-file'}: cannot write transcripts there")
    assert err[-1] == "\n"
    assert err.count("\n") == 1 and (tmp_path / "a-file").read_text(encoding="utf-8") == "mine"
