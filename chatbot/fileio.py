"""Crash-safe folder writes, shared by checkpoints, published models and encoded datasets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of `dest` to fill; when the block succeeds it replaces `dest`.

    A crash or an exception at any moment leaves either the old `dest` or the complete new one,
    never a half-written folder under its name. A leftover temporary folder from a crash is
    removed by the next write of the same `dest`.
    """
    dest = Path(dest)
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
