"""The one owner of writes to a user's disk: what may be replaced, what is refused, and what a
killed run leaves behind and how the next run cleans it.

Rules every command follows through this module:
- An output folder is written under a hidden temporary name and renamed into place when complete.
- An existing output is replaced only when it is a previous output of the same kind (`is_ours`),
  and a command replaces one only when its user passed --overwrite.
- Nothing else is ever deleted, moved or overwritten: not a file, not a folder holding anything
  else, not the folder the user stands in.
- Hidden `.NAME.tmp` / `.NAME.old` / `.NAME.del` folders left by a run killed mid-save or
  mid-delete are recognised and cleaned by the next write of NAME (or by `recover_stale`).
- Every output is checked for writability before any work starts.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

IsOurs = Callable[[Path], bool]
_NEARLY_FULL = 1 << 20  # bytes: a write that failed with less free than this failed for want of space
_STALE_SUFFIXES = (".tmp", ".old", ".del")


def temp_names(dest: Path) -> tuple[Path, Path]:
    """(`.NAME.tmp`, `.NAME.old`): the hidden siblings `atomic_dir` writes and swaps through."""
    return dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")


def remove_dir(path: Path) -> None:
    """Delete a folder of ours so that a kill midway never leaves a half-deleted one under its name:
    it is renamed to `.NAME.del` first, which the next `recover_stale` finishes deleting."""
    doomed = path.with_name(f".{path.name}.del")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed)


def recover_stale(dest: Path) -> None:
    """Clean what a run killed inside `atomic_dir(dest)` or `remove_dir(dest)` left behind.

    `.NAME.tmp` is an unfinished write and `.NAME.del` an unfinished delete: removed. `.NAME.old`
    is the previous complete version: put back when the kill came between the two renames (NAME
    is missing), else removed. Only folders are touched: a `.NAME.old` file is not ours.
    """
    tmp, old = temp_names(dest)
    if old.is_dir() and not old.is_symlink():
        if dest.exists() or dest.is_symlink():
            shutil.rmtree(old)
        else:
            old.rename(dest)
    for leftover in (tmp, dest.with_name(f".{dest.name}.del")):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)


def recover_stale_file(path: Path) -> None:
    """Remove the `.NAME.tmp` file an `atomic_write_text(path)` killed before its rename left behind:
    a partial copy, while `path` itself still holds every line."""
    temp_names(path)[0].unlink(missing_ok=True)


def recover_stale_in(folder: Path, is_ours_name: Callable[[str], bool]) -> list[str]:
    """`recover_stale` for every `.NAME.tmp`/`.NAME.old` in `folder` whose NAME `is_ours_name`;
    returns the names cleaned."""
    if not folder.is_dir():
        return []
    cleaned = []
    for entry in sorted(folder.iterdir()):
        name = stale_target(entry.name)
        if name and is_ours_name(name) and entry.is_dir():
            recover_stale(folder / name)
            cleaned.append(entry.name)
    return cleaned


def stale_target(name: str) -> str | None:
    """`.best.old` -> `best`; None for a name `atomic_dir` and `remove_dir` never make."""
    for suffix in _STALE_SUFFIXES:
        if name.startswith(".") and name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[1:-len(suffix)]
    return None


@contextmanager
def atomic_dir(dest: str | Path, is_ours: IsOurs) -> Iterator[Path]:
    """Yield an empty hidden sibling of `dest` to fill; when the block succeeds it replaces `dest`.

    A crash or an exception at any moment leaves either the old `dest` or the complete new one,
    never a half-written folder under its name; the next call cleans what a kill left. An
    existing `dest` is replaced only if it is empty or `is_ours(dest)`.

    Raises:
        ValueError: if `dest` exists and is not ours (see `check_output_dir`).
        OSError: naming `dest` (not the hidden name) when the disk refuses a write.
    """
    dest = _absolute(dest)
    recover_stale(dest)
    check_output_dir(dest, is_ours=is_ours, overwrite=True, what="output")
    tmp, old = temp_names(dest)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        disk_error = _disk_error(e, tmp, dest)
        if disk_error is None:
            raise
        raise disk_error from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output_dir(path: str | Path, *, is_ours: IsOurs, overwrite: bool, what: str, flag: str = "output",
                     how_to_replace: str = "pass --overwrite to replace it") -> Path:
    """Check before any work that `path` may receive an output folder; return it absolute.

    Allowed: a new path, an empty folder, or (with `overwrite`) a previous output of ours.

    Raises:
        ValueError: naming `flag`, the path and why it is refused.
        OSError: if the nearest existing folder is not writable.
    """
    given, path = path, _absolute(path)
    shown = f"{flag} {given}" + (f" ({path})" if str(given) != str(path) else "")
    cwd = Path.cwd()
    if path == cwd or path in cwd.parents:
        raise ValueError(f"{shown} is the folder you are in (or holds it); name a new folder for the "
                         f"{what}, e.g. {flag} {path / 'out'}")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ValueError(f"{shown} is an existing file, not a folder; it is left as it is. "
                             f"Name a new folder for the {what}.")
        entries = sorted(p.name for p in path.iterdir())
        if entries and not is_ours(path):
            listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ValueError(f"{shown} is a folder holding other files ({listed}), not a previous {what}; "
                             f"nothing in it is replaced. Name a new or empty folder.")
        if entries and not overwrite:
            raise ValueError(f"{shown} already holds a {what}; {how_to_replace}, or name another folder")
    check_writable(path)
    return path


def check_output_file(path: str | Path, *, is_ours: IsOurs, overwrite: bool, what: str, flag: str) -> Path:
    """`check_output_dir` for a single output file, e.g. a JSON report."""
    path = _absolute(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; name a file for the {what}, "
                         f"e.g. {path / 'report.json'}")
    if path.exists() and not is_ours(path):
        raise ValueError(f"{flag} {path} is an existing file that is not a {what}; it is left as it is. "
                         "Name a new file.")
    if path.exists() and not overwrite:
        raise ValueError(f"{flag} {path} already holds a {what}; pass --overwrite to replace it, "
                         "or name another file")
    check_writable(path)
    return path


def check_writable(path: str | Path) -> None:
    """Check that `path` (or the nearest folder above it that exists) accepts a new entry.

    `os.access` asks the kernel, which knows about read-only mounts (where root too is refused),
    and leaves nothing behind if the run is killed (a probe file would).

    Raises:
        OSError: EROFS or EACCES, with `path` as the filename.
        ValueError: if something on the way is a file, not a folder.
    """
    path = _absolute(path)
    existing = path if path.is_dir() else next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), str(path))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file under a hidden name and rename it into place (parents are created)."""
    path = _absolute(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise _disk_error(e, tmp, path) from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def clear_outputs(folder: Path, is_ours_name: Callable[[str], bool]) -> None:
    """--overwrite: remove the entries of a previous output of ours, and only those."""
    for entry in folder.iterdir():
        if is_ours_name(stale_target(entry.name) or entry.name):
            remove_dir(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _absolute(path: str | Path) -> Path:
    """Absolute and normalised, so `.` and `..` have real names (Path('.').name is '')."""
    path = Path(os.path.abspath(path))
    if not path.name:
        raise ValueError(f"cannot use {path} as an output: name a folder inside it")
    return path


def _disk_error(e: Exception, tmp: Path, dest: Path) -> OSError | None:
    """An OSError naming what the user asked for (not our hidden temporary name), or None when
    `e` is not a failure of the disk.

    Writers outside Python report a full disk their own way: safetensors as "... (os error 28)",
    torch.save as an opaque RuntimeError; the free space tells then.
    """
    if isinstance(e, OSError) and e.errno is None:  # ours, e.g. FileNotFoundError("corpus not found: ...")
        return None
    if isinstance(e, OSError):
        code, reason, filename = e.errno, e.strerror or str(e), str(e.filename or dest)
        if filename.startswith(str(tmp)):
            filename = str(dest) + filename[len(str(tmp)):]
        return OSError(code, reason, filename)
    if (found := re.search(r"\(os error (\d+)\)", str(e))):
        return OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(dest))
    nearly_full = shutil.disk_usage(tmp if tmp.exists() else dest.parent).free < _NEARLY_FULL
    if isinstance(e, RuntimeError) and nearly_full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    return None
