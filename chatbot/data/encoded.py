"""The encoded-dataset folder: its files, its meta.json, and whether a folder is one.

An encoded dataset is a folder:
  tokens.bin   every example's ids back to back (uint16 when the vocabulary fits, else uint32)
  offsets.npy  int64, n_examples + 1 boundaries into tokens.bin
  meta.json    format version, tokenizer fingerprint, max_len, counts, and each source's
               path, size and mtime (so a cache can tell when it is stale)

`chatbot.data.preprocess` writes it and `chatbot.data.dataset` reads it; both take the names,
the checks and the errors from here. No torch: chatbot-preprocess uses this module too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
TOKENS_FILE, OFFSETS_FILE, META_FILE = "tokens.bin", "offsets.npy", "meta.json"
DATASET_FILES = (TOKENS_FILE, OFFSETS_FILE, META_FILE)


def read_meta(folder: str | Path) -> dict:
    """The meta.json of the encoded dataset in `folder`, checked before any array is opened.

    Raises:
        FileNotFoundError: naming the missing files, if `folder` is not a complete encoded dataset.
        ValueError: naming meta.json, if it is damaged or another format version wrote it.
    """
    folder = Path(folder)
    missing = [f for f in (META_FILE, OFFSETS_FILE, TOKENS_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not an encoded dataset: missing {', '.join(missing)} "
                                "(make one with chatbot-preprocess)")
    meta = _parse_meta(folder)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder} was written by another chatbot version (format "
                         f"{meta.get('format_version')}, expected {FORMAT_VERSION}); "
                         "run chatbot-preprocess again")
    return meta


def _parse_meta(folder: Path) -> dict:
    """meta.json as a dict, whatever its format version.

    Raises:
        OSError: if it cannot be read.
        ValueError: naming the file, if it is not a JSON object.
    """
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); run chatbot-preprocess again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); run chatbot-preprocess again")
    return meta


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")


def open_arrays(folder: str | Path, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, tokens) of an encoded dataset, memory-mapped: the pages are read when used."""
    folder = Path(folder)
    offsets = np.load(folder / OFFSETS_FILE, mmap_mode="r")
    return offsets, np.memmap(folder / TOKENS_FILE, dtype=meta["dtype"], mode="r")


def _our_meta(folder: Path) -> dict | None:
    """The meta.json of a folder preprocess wrote (any format version) and no one added to, else None."""
    try:
        meta = _parse_meta(folder)
    except (OSError, ValueError):
        return None
    names = {p.name for p in folder.iterdir()}
    return meta if "format_version" in meta and names <= set(DATASET_FILES) else None


def is_encoded_dataset(folder: Path) -> bool:
    """True for a folder `preprocess` wrote (its meta.json names a format version), holding nothing else."""
    return _our_meta(folder) is not None


def source_info(path: str | Path) -> dict:
    """What meta.json records of a corpus file, to notice when it changes."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime": st.st_mtime}


def is_fresh(folder: Path, corpora: list[str | Path], *, vocab_fingerprint: str, max_len: int) -> bool:
    """True when `folder` is an encoded dataset that still matches its sources, the vocabulary and max_len.

    A damaged or foreign folder is not fresh, so a cache rebuilds it instead of failing.
    """
    meta = _our_meta(folder)
    return (meta is not None and meta.get("format_version") == FORMAT_VERSION
            and meta.get("max_len") == max_len and meta.get("vocab_fingerprint") == vocab_fingerprint
            and meta.get("sources") == [source_info(p) for p in corpora])


def unk_rate(meta: dict) -> float:
    """The share of [UNK] among the tokens of an encoded dataset."""
    return meta["unk_tokens"] / max(meta["tokens"], 1)
