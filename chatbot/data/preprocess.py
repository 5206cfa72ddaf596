"""Encode corpora into a compact, memory-mappable token store (see chatbot.data.encoded).

Each dialogue becomes `[CLS] u1 [SEP] u2 [SEP] … un [SEP]`. One longer than `max_len` is split at
turn boundaries into maximal windows: every window is the longest run of whole turns that fits,
so each turn appears with as much preceding context as fits. Windows never overlap fully and
there is at most one per turn. A single turn longer than the limit is truncated (and counted).
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import BertTokenizerFast

from chatbot.data.corpus import CorpusStats, detect_format, read_dialogues
from chatbot.data.encoded import (
    FORMAT_VERSION,
    OFFSETS_FILE,
    TOKENS_FILE,
    is_encoded_dataset,
    source_info,
    write_meta,
)
from chatbot.fileio import atomic_dir
from chatbot.layout import join_turns, split_at
from chatbot.tokenization import encode_texts, vocab_fingerprint

CHUNK = 2048  # dialogues per tokenizer call: large enough to keep the Rust side busy


@dataclass
class EncodeStats:
    examples: int = 0
    tokens: int = 0
    unk: int = 0
    windowed_dialogues: int = 0
    truncated_turns: int = 0
    skipped: Counter = field(default_factory=Counter)


def window_turns(lengths: list[int], max_len: int) -> list[tuple[int, int]]:
    """Maximal [start, end) turn ranges whose `[CLS] t [SEP] t [SEP]…` encoding fits `max_len`.

    Each turn costs its length plus one [SEP]; the window adds one [CLS]. Every length must
    already be <= max_len - 2. Returns one range when the whole dialogue fits.
    """
    windows, start, total = [], 0, 1
    for end, n in enumerate(lengths):
        total += n + 1
        while total > max_len:
            total -= lengths[start] + 1
            start += 1
        next_fits = end + 1 < len(lengths) and total + lengths[end + 1] + 1 <= max_len
        if not next_fits:
            if not windows or windows[-1][1] <= end:
                windows.append((start, end + 1))
    return windows


class Encoder:
    """Turns batches of dialogues into flat id arrays; picklable for worker processes.

    A dialogue goes to the tokenizer as one string, its turns joined by the [SEP] token's text.
    The tokenizer cuts special tokens out before normalizing, so this gives exactly the ids of
    the turns encoded one by one with [SEP] between, from one Encoding per dialogue instead of
    one per turn (the per-turn Python objects cost as much as the tokenizing itself). Text that
    spells "[SEP]" inside a turn becomes a turn boundary, as it would be in the training ids.
    """

    def __init__(self, tokenizer: BertTokenizerFast, max_len: int, text_mode: bool = False):
        if max_len < 4:
            raise ValueError(f"max_len must be >= 4 to hold [CLS] a [SEP] b [SEP], got {max_len}")
        self.tokenizer, self.max_len, self.text_mode = tokenizer, max_len, text_mode
        self.cls, self.sep, self.unk = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
        self.sep_text = tokenizer.sep_token
        if encode_texts(tokenizer, [f"a{self.sep_text}a"])[0].count(self.sep) != 1:
            raise ValueError(f"the tokenizer does not treat {self.sep_text!r} as one special token")

    def __call__(self, dialogues: list[list[str]]) -> tuple[list[int], list[int], EncodeStats]:
        """Returns (flat ids, example lengths, stats) for one batch of dialogues."""
        ids, lengths, stats = [], [], EncodeStats()
        if self.text_mode:  # a passage is cut into max_len windows of running text
            body = self.max_len - 2
            for passage in encode_texts(self.tokenizer, [t for d in dialogues for t in d]):
                for i in range(0, len(passage), body):
                    self._emit([self.cls, *passage[i:i + body], self.sep], ids, lengths, stats)
            return ids, lengths, stats
        for joined in encode_texts(self.tokenizer, [self.sep_text.join(d) for d in dialogues]):
            turns = split_at(joined, self.sep)
            if len(joined) + 2 <= self.max_len and len(turns) >= 2 and all(turns):
                # The common case, the whole dialogue fits: join_turns(turns) is [CLS] + joined + [SEP].
                self._emit([self.cls, *joined, self.sep], ids, lengths, stats)
                continue
            turns = [t for t in turns if t]  # a turn of only control chars encodes empty
            if len(turns) < 2:
                stats.skipped["empty after tokenization"] += 1
                continue
            for k, turn in enumerate(turns):
                if len(turn) > self.max_len - 2:
                    turns[k] = turn[:self.max_len - 2]
                    stats.truncated_turns += 1
            windows = window_turns([len(t) for t in turns], self.max_len)
            stats.windowed_dialogues += len(windows) > 1
            for start, end in windows:
                example = join_turns(turns[start:end], cls_id=self.cls, sep_id=self.sep)
                self._emit(example, ids, lengths, stats)
        return ids, lengths, stats

    def _emit(self, example: list[int], ids: list[int], lengths: list[int], stats: EncodeStats) -> None:
        ids += example
        lengths.append(len(example))
        stats.examples += 1
        stats.tokens += len(example)
        stats.unk += example.count(self.unk)


def _chunks(items: Iterable[list[str]], size: int) -> Iterator[list[list[str]]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def preprocess(corpora: list[str | Path], output: str | Path, tokenizer: BertTokenizerFast, *,
               max_len: int, format: str = "auto", split: str | None = None, skip_bad: bool = False,
               workers: int = 1, progress: bool = True) -> dict:
    """Encode `corpora` into the folder `output` and return its metadata.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    run never leaves something that looks finished. An existing `output` is replaced only if it
    is a previous encoded dataset (see `chatbot.fileio`).

    Raises:
        FileNotFoundError / CorpusError: from the readers.
        ValueError: if no usable dialogue remains, or `output` is not ours to replace.
        OSError: if the disk refuses a write (naming `output`).
    """
    with atomic_dir(output, is_ours=is_encoded_dataset) as tmp:
        return _encode_into(tmp, corpora, tokenizer, max_len=max_len, format=format, split=split,
                            skip_bad=skip_bad, workers=workers, progress=progress)


def _encode_into(folder: Path, corpora, tokenizer, *, max_len, format, split, skip_bad, workers,
                 progress) -> dict:
    started = time.perf_counter()
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.uint32
    read_stats = [CorpusStats() for _ in corpora]
    dialogues = (d for path, st in zip(corpora, read_stats)
                 for d in read_dialogues(path, format=format, split=split, skip_bad=skip_bad, stats=st))
    text_mode = format == "text"
    encoder = Encoder(tokenizer, max_len, text_mode)
    total, lengths = EncodeStats(), []
    bar = tqdm(desc="encoding", unit=" dialogues", disable=not progress, smoothing=0.1)
    with open(folder / TOKENS_FILE, "wb") as out:
        for n_dialogues, (ids, lens, stats) in _encode_chunks(encoder, _chunks(dialogues, CHUNK), workers):
            out.write(np.asarray(ids, dtype=dtype).data)  # not tofile: its errors lose the errno (disk full)
            lengths += lens
            _merge(total, stats)
            bar.update(n_dialogues)
    bar.close()
    read = _merge_read(read_stats)
    if total.examples == 0:
        raise ValueError(f"no usable dialogues in {', '.join(map(str, corpora))}: read {read.dialogues} "
                         f"dialogues, skipped {dict(read.skipped + total.skipped) or 'none'}")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(folder / OFFSETS_FILE, offsets)
    meta = {
        "format_version": FORMAT_VERSION, "dtype": np.dtype(dtype).name, "max_len": max_len,
        "vocab_size": len(tokenizer), "vocab_fingerprint": vocab_fingerprint(tokenizer),
        "corpus_format": [detect_format(p) if format == "auto" else format for p in corpora],
        "split": split, "text_mode": text_mode,
        "sources": [source_info(p) for p in corpora],
        "dialogues": read.dialogues, "turns": read.turns, "chars": read.chars,
        "examples": total.examples, "tokens": total.tokens, "unk_tokens": total.unk,
        "windowed_dialogues": total.windowed_dialogues, "truncated_turns": total.truncated_turns,
        "cut_while_reading": read.cut_turns,
        "skipped": dict(read.skipped + total.skipped), "seconds": round(time.perf_counter() - started, 3),
    }
    write_meta(folder, meta)
    return meta


def _encode_chunks(encoder: Encoder, chunks: Iterator[list[list[str]]], workers: int):
    """Yield (dialogues in chunk, encoder(chunk)) in corpus order, in-process or in a pool."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        for chunk in chunks:
            yield len(chunk), encoder(chunk)
        return
    # fork shares the loaded tokenizer instead of re-importing transformers in every worker;
    # the pool starts before this process encodes anything, so no tokenizer threads are forked.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with get_context(method).Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((len(chunk), pool.apply_async(_encode_in_worker, (chunk,))))
            if len(pending) > 2 * workers:  # bound memory: a few chunks in flight per worker
                n, result = pending.popleft()
                yield n, result.get()
        while pending:
            n, result = pending.popleft()
            yield n, result.get()


_worker_encoder: Encoder | None = None


def _init_worker(encoder: Encoder) -> None:
    global _worker_encoder
    # Each process is one worker: Rust-side threads would only fight over the same cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = encoder


def _encode_in_worker(chunk: list[list[str]]):
    return _worker_encoder(chunk)


def _merge(total: EncodeStats, part: EncodeStats) -> None:
    total.examples += part.examples
    total.tokens += part.tokens
    total.unk += part.unk
    total.windowed_dialogues += part.windowed_dialogues
    total.truncated_turns += part.truncated_turns
    total.skipped.update(part.skipped)


def _merge_read(parts: list[CorpusStats]) -> CorpusStats:
    out = CorpusStats()
    for p in parts:
        out.dialogues += p.dialogues
        out.turns += p.turns
        out.chars += p.chars
        out.cut_turns += p.cut_turns
        out.skipped.update(p.skipped)
    return out
