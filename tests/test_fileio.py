"""chatbot.fileio: what may be replaced, what is refused, and what a killed write leaves."""

import errno
import os

import pytest

from chatbot.fileio import atomic_dir, atomic_write_text, check_output_dir, check_writable, recover_stale


def ours(path):
    return (path / "ours.txt").is_file()


def fill(folder, text="new"):
    (folder / "ours.txt").write_text(text)


def test_atomic_dir_writes_new_and_replaces_ours(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest, ours) as tmp:
        fill(tmp, "one")
    with atomic_dir(dest, ours) as tmp:
        fill(tmp, "two")
    assert (dest / "ours.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("make", ["file", "foreign folder"])
def test_atomic_dir_never_replaces_what_is_not_ours(tmp_path, make):
    dest = tmp_path / "out"
    if make == "file":
        dest.write_text("precious")
    else:
        dest.mkdir()
        (dest / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="out"):
        with atomic_dir(dest, ours) as tmp:
            fill(tmp)
    kept = dest if make == "file" else dest / "notes.txt"
    assert kept.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_keeps_the_previous_output(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest, ours) as tmp:
        fill(tmp, "one")
    with pytest.raises(KeyError):
        with atomic_dir(dest, ours) as tmp:
            fill(tmp, "half")
            raise KeyError("boom")
    assert (dest / "ours.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_disk_errors_name_the_output_not_the_hidden_folder(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(OSError) as e:
        with atomic_dir(dest, ours) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "tokens.bin"))
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(dest / "tokens.bin"))
    with pytest.raises(OSError) as e:  # safetensors' way of saying it
        with atomic_dir(dest, ours):
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(dest))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("leftover, dest_exists, expect", [
    (".out.old", True, ["out"]),    # killed while deleting the replaced version
    (".out.old", False, ["out"]),   # killed between the two renames: the old version comes back
    (".out.tmp", True, ["out"]),    # killed while writing
    (".out.del", True, ["out"]),    # killed while pruning
])
def test_leftovers_of_a_killed_write_are_cleaned(tmp_path, leftover, dest_exists, expect):
    dest = tmp_path / "out"
    if dest_exists:
        dest.mkdir()
        fill(dest, "current")
    (tmp_path / leftover).mkdir()
    fill(tmp_path / leftover, "leftover")
    recover_stale(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == expect
    assert (dest / "ours.txt").read_text() == ("current" if dest_exists else "leftover")
    with atomic_dir(dest, ours) as tmp:  # and the next write works
        fill(tmp)


def test_a_hidden_file_with_our_suffix_is_not_touched(tmp_path):
    (tmp_path / ".out.old").write_text("a user's file")
    recover_stale(tmp_path / "out")
    assert (tmp_path / ".out.old").read_text() == "a user's file"


@pytest.mark.parametrize("where, message", [
    (".", "is the folder you are in"), ("..", "is the folder you are in"),
    ("afile", "is an existing file"), ("foreign", "holding other files (a.txt)"),
    ("previous", "already holds a thing; pass --overwrite"),
])
def test_check_output_dir_refuses(tmp_path, monkeypatch, where, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "a.txt").write_text("x")
    (tmp_path / "previous").mkdir()
    fill(tmp_path / "previous")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_output_dir(tmp_path / where if where not in (".", "..") else where, is_ours=ours,
                         overwrite=False, what="thing", flag="--output")
    previous = tmp_path / "previous"
    assert check_output_dir(previous, is_ours=ours, overwrite=True, what="thing") == previous


def test_unwritable_output_is_found_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("chatbot.fileio.os.access", lambda *args: False)
    read_only = os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255))
    monkeypatch.setattr("chatbot.fileio.os.statvfs", lambda path: read_only)
    with pytest.raises(OSError) as e:
        check_writable(tmp_path / "new" / "deeper")
    assert (e.value.errno, e.value.filename) == (errno.EROFS, str(tmp_path / "new" / "deeper"))


def test_atomic_write_text_creates_parents_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "r.json", "{}")
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["r.json"]
