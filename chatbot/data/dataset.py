"""Encoded datasets, batching and collation for training and evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import BertTokenizerFast

from chatbot.data.corpus import check_corpus_file
from chatbot.data.encoded import is_fresh, open_arrays, read_meta
from chatbot.data.preprocess import preprocess
from chatbot.layout import (
    CDIAL,
    CHITCHAT,
    IGNORE_INDEX,
    LOSS_ON,
    cdial_example,
    label_mask,
    reverse_turns,
    speaker_token_ids,
    turn_index,
)
from chatbot.tokenization import vocab_fingerprint


class TokenDataset(Dataset):
    """Examples of an encoded folder (see chatbot.data.encoded), memory-mapped, never loaded whole."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        self.offsets, self.tokens = open_arrays(self.folder, self.meta)
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index]:self.offsets[index + 1]].astype(np.int64)


def load_dataset(path: str | Path, tokenizer: BertTokenizerFast, *, max_len: int, format: str = "auto",
                 split: str | None = None, skip_bad: bool = False, cache_dir: str | Path | None = None,
                 workers: int = 1, progress: bool = True) -> TokenDataset:
    """Open an encoded folder, or encode a raw corpus file once and reuse the cached result.

    The cache is rebuilt whenever the corpus (size or mtime), the vocabulary or `max_len`
    changes, so edits to a corpus are never silently ignored.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if an encoded folder does not match `tokenizer` or exceeds `max_len`, or `path`
            is neither a folder nor a regular file (CorpusError).
        OSError: naming the file the system refused; CHATBOT_CACHE is suggested only when that
            file is in the cache.
    """
    path = Path(path)
    if path.is_dir():
        dataset = TokenDataset(path)
        if dataset.meta["vocab_fingerprint"] != vocab_fingerprint(tokenizer):
            raise ValueError(f"{path} was encoded with another vocabulary than this model's; "
                             "run chatbot-preprocess again with the model's tokenizer (--tokenizer DIR)")
        if dataset.meta["max_len"] > max_len:
            raise ValueError(f"{path} holds examples up to {dataset.meta['max_len']} tokens but max_len is "
                             f"{max_len}; preprocess again with --max-len {max_len} or raise --max-len")
        return dataset
    check_corpus_file(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / cache_key(path, format=format, split=split)
    if is_fresh(folder, [path], vocab_fingerprint=vocab_fingerprint(tokenizer), max_len=max_len):
        return TokenDataset(folder)
    if progress:
        print(f"encoding {path} into {folder}", file=sys.stderr)
    try:
        preprocess([path], folder, tokenizer, max_len=max_len, format=format, split=split,
                   skip_bad=skip_bad, workers=workers, progress=progress)
    except OSError as e:
        if not _is_inside(e.filename, cache_dir):  # e.g. an unreadable corpus: its own name says it all
            raise
        raise OSError(e.errno, f"{e.strerror} (writing the cache of encoded corpora; set CHATBOT_CACHE "
                               "to a writable folder)", e.filename) from e
    return TokenDataset(folder)


def _is_inside(filename: str | bytes | None, folder: Path) -> bool:
    """True when an OSError's `filename` lies in `folder` (paths compared absolute)."""
    if not isinstance(filename, (str, bytes)):  # None, or a file descriptor
        return False
    return Path(os.path.abspath(os.fsdecode(filename))).is_relative_to(os.path.abspath(folder))


def default_cache_dir() -> Path:
    """Where encoded corpora are cached: $CHATBOT_CACHE, else ~/.cache/chatbot."""
    return Path(os.environ.get("CHATBOT_CACHE", Path.home() / ".cache" / "chatbot"))


def cache_key(corpus: str | Path, *, format: str, split: str | None) -> str:
    """A folder name for the cached encoding of one corpus file (path and reading options)."""
    ident = json.dumps([str(Path(corpus).resolve()), format, split])
    return f"{Path(corpus).stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def make_collate(tokenizer: BertTokenizerFast, *, loss_on: str = "all", speaker_ids: bool = False,
                 reverse: bool = False,
                 layout: str = CHITCHAT) -> Callable[[list[np.ndarray]], dict[str, torch.Tensor]]:
    """A collate_fn padding a batch to its longest example.

    Returns `input_ids`, `attention_mask`, `labels` (and `token_type_ids` when `speaker_ids` or
    in the CDIAL layout). `labels` equal `input_ids` where the loss applies and IGNORE_INDEX
    elsewhere; the model shifts them itself, so the logits at position t are scored against labels[t + 1].

    `loss_on` picks the turns that carry loss (see `chatbot.layout.label_mask`). `reverse`
    reverses the turn order of every example first (the backward model of MMI reranking).
    `layout` is how the model reads a dialogue (see `chatbot.layout`); examples are stored in
    the CHITCHAT layout either way.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
    pad_id, sep_id = tokenizer.pad_token_id, tokenizer.sep_token_id
    speakers = None
    if speaker_ids or layout == CDIAL:
        speakers = np.array(speaker_token_ids(tokenizer.get_vocab()))

    def example(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(ids, token_type_ids or None, loss mask) of one stored example."""
        if reverse:
            ids = reverse_turns(ids, sep_id)
        if layout == CDIAL:
            return cdial_example(ids, sep_id=sep_id, speaker_ids=tuple(speakers), loss_on=loss_on)
        types = None if speakers is None else speakers[turn_index(ids, sep_id) % 2]
        return ids, types, label_mask(ids, sep_id, loss_on)

    def collate(batch: list[np.ndarray]) -> dict[str, torch.Tensor]:
        rows = [example(ids) for ids in batch]
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)  # (B, T)
        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for row, (ids, row_types, keep) in enumerate(rows):
            n = len(ids)
            input_ids[row, :n] = ids
            mask[row, :n] = 1
            labels[row, :n] = np.where(keep, ids, IGNORE_INDEX)
            if row_types is not None:
                types[row, :n] = row_types
        out = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
               "labels": torch.from_numpy(labels)}
        if speakers is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        return out

    return collate


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length examples, in random order, split across DDP ranks.

    Each epoch the indices are shuffled, cut into groups of `group_size` batches, each group
    sorted by length and cut into batches, and the batches shuffled again: padding drops while
    batches stay random. Every rank gets the same number of batches (the shortest tail is
    dropped), so DDP ranks never wait on each other at the end of an epoch. Deterministic in
    (seed, epoch): call `set_epoch` every epoch. With `shuffle=False` (evaluation) batches are
    sorted by length and every example is kept.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, group_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(lengths) < num_replicas:
            raise ValueError(f"{len(lengths)} examples cannot be split across {num_replicas} processes")
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.shuffle, self.seed = shuffle, seed
        self.num_replicas, self.rank, self.group_size = num_replicas, rank, group_size
        self.epoch = self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; `start_batch` skips the batches a resumed run already did."""
        self.epoch, self.start_batch = epoch, start_batch

    def _all_batches(self) -> list[np.ndarray]:
        if not self.shuffle:  # evaluation: sorted by length, the least padding possible
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        group = self.batch_size * self.group_size
        batches = []
        for i in range(0, len(order), group):
            chunk = order[i:i + group]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def rank_batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch, from the first one."""
        batches = self._all_batches()[self.rank::self.num_replicas]
        return batches[:len(self)] if self.shuffle else batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.rank_batches()[self.start_batch:]:
            yield batch.tolist()

    def __len__(self) -> int:
        """Batches per epoch on this rank (training ranks all get the same number)."""
        n = math.ceil(len(self.lengths) / self.batch_size)
        if not self.shuffle:
            return len(range(self.rank, n, self.num_replicas))
        return n // self.num_replicas


class Subset(Dataset):
    """Some examples of a dataset, keeping `lengths` for the batch sampler."""

    def __init__(self, dataset: TokenDataset | "Subset", indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices)
        self.lengths = dataset.lengths[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.dataset[int(self.indices[index])]


def split_holdout(dataset: TokenDataset, ratio: float, seed: int) -> tuple[Subset, Subset]:
    """A seeded (train, valid) split of the examples, at least one example on each side.

    Raises:
        ValueError: if there are fewer than two examples.
    """
    if len(dataset) < 2:
        raise ValueError(f"--valid-ratio needs at least 2 examples, the training data has {len(dataset)}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_valid = min(max(1, round(len(dataset) * ratio)), len(dataset) - 1)
    return Subset(dataset, np.sort(order[n_valid:])), Subset(dataset, np.sort(order[:n_valid]))


def padding_fraction(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """Share of positions in padded batches that are padding."""
    real = padded = 0
    for batch in batches:
        lens = lengths[batch]
        real += int(lens.sum())
        padded += int(lens.max()) * len(lens)
    return 1 - real / padded if padded else 0.0


def make_loader(dataset, collate, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                num_workers: int = 0,
                pin_memory: bool = False) -> tuple[LengthGroupedBatchSampler, DataLoader]:
    """(sampler, loader) of length-grouped batches, this process' share of them under DDP."""
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, seed=seed, num_replicas=world_size,
                                        rank=rank)
    # A private generator: DataLoader otherwise draws its seed from the global RNG each epoch,
    # which would shift dropout masks after a resume.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    return sampler, loader
