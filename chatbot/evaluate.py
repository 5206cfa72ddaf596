"""Evaluation: perplexity over the tokens the training loss uses, and reply-quality metrics."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from chatbot.data.dataset import LengthGroupedBatchSampler
from chatbot.distributed import all_reduce_sum
from chatbot.fileio import atomic_write_text
from chatbot.layout import IGNORE_INDEX, MAX_HISTORY, split_turns
from chatbot.model.loss import next_token_loss
from chatbot.metrics import reply_metrics
from chatbot.tokenization import decode_ids


@torch.no_grad()
def evaluate_loss(model, dataset, collate, *, batch_size: int, device: torch.device,
                  autocast_dtype: torch.dtype | None = None, rank: int = 0, world_size: int = 1,
                  progress: bool = False) -> dict[str, float]:
    """Mean loss per label token and perplexity, summed over all ranks' shares of `dataset`.

    Summing token losses (rather than averaging batch means) weights every token equally,
    whatever the batch it fell in.
    """
    was_training = model.training
    model.eval()
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=False,
                                        num_replicas=world_size, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    total, count = 0.0, 0
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        with amp:
            loss = next_token_loss(model, labels, reduction="sum", **batch)
        total += loss.item()
        count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    total, count = all_reduce_sum([total, float(count)], device)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation data has no tokens to score (check --loss-on and the data)")
    mean = total / count
    try:
        ppl = math.exp(mean)
    except OverflowError:
        ppl = float("inf")
    return {"loss": mean, "ppl": ppl, "tokens": int(count)}


# CDial-GPT's evaluation setting: nucleus sampling at top-p 0.9, temperature 0.7, no top-k.
CDIAL_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 0}
GREEDY = {"temperature": 0.0}


def example_turns(dataset, tokenizer, index: int) -> list[str]:
    """The turns of an encoded example as text: `[CLS] a [SEP] b [SEP]` -> ["a", "b"]."""
    return [decode_ids(tokenizer, turn)
            for turn in split_turns(dataset[index].tolist(), tokenizer.sep_token_id)]


def sample_indices(n_total: int, n: int | None, seed: int) -> list[int]:
    """A seeded subset of `n` indices in increasing order (all of them when `n` is None or larger)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted(np.random.default_rng(seed).choice(n_total, size=n, replace=False).tolist())


@dataclass
class Generation:
    """Replies generated with one set of sampling options, and their metrics."""

    options: dict  # the sampling options used
    metrics: dict  # see chatbot.metrics.reply_metrics
    samples: list[dict]  # {"history", "reference", "generated"} per example


@dataclass
class EvalReport:
    """What chatbot-eval (and chatbot-train --eval-generate) measured; `to_dict` is its JSON form."""

    model: str
    data: str
    examples: int
    loss_on: str
    perplexity: dict | None  # {"loss", "ppl", "tokens"}, or None when not measured
    generation: dict[str, Generation] = field(default_factory=dict)  # "sampled", "greedy"

    def to_dict(self) -> dict:
        runs = self.generation.items()
        return {"model": self.model, "data": self.data, "examples": self.examples, "loss_on": self.loss_on,
                "perplexity": self.perplexity,
                "generation": {name: {"options": g.options, **g.metrics} for name, g in runs},
                "samples": {name: g.samples for name, g in runs}}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=2))


REPORT_KEYS = ("model", "data", "examples", "loss_on", "perplexity", "generation", "samples")


def is_eval_report(path: Path) -> bool:
    """True for a JSON file `chatbot-eval --output` wrote (so --overwrite may replace it)."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and all(k in report for k in REPORT_KEYS)


def evaluate_generation(bot, dataset, indices: list[int], *, sampling: dict, seed: int,
                        progress: bool = False) -> Generation:
    """Reply to the second-last turn of each example (earlier turns as history); the last turn is
    the reference. Reply i is sampled with seed + i."""
    samples = []
    for i, index in enumerate(tqdm(indices, desc="generating", disable=not progress, leave=False)):
        turns = example_turns(dataset, bot.tokenizer, index)
        if len(turns) < 2:
            continue
        reply = bot.reply(turns[-2], history=turns[:-2], seed=seed + i, **sampling)
        samples.append({"history": turns[:-1], "reference": turns[-1], "generated": reply})
    if not samples:
        raise ValueError("no example has two turns to evaluate a reply on (is this --format text?)")
    metrics = reply_metrics([s["generated"] for s in samples], [s["reference"] for s in samples])
    return Generation(dict(sampling), metrics, samples)


def evaluate_trained_replies(model, tokenizer, training_args: dict, dataset, *, n: int,
                             seed: int) -> Generation:
    """Reply metrics of a model just trained (`chatbot-train --eval-generate N`) on `n` of `dataset`'s
    dialogues, sampled as `chatbot-chat` samples by default."""
    from chatbot.bot import ChatBot
    from chatbot.options import SamplingOptions

    model.eval()
    bot = ChatBot(model, tokenizer, training_args=training_args)
    indices = sample_indices(len(dataset), n, seed)
    return evaluate_generation(bot, dataset, indices, sampling=asdict(SamplingOptions()), seed=seed)


def evaluate_model(model_dir: str, data: str, *, format: str = "auto", split: str | None = None,
             skip_bad: bool = False, loss_on: str | None = None, batch_size: int = 16,
             num_samples: int | None = None, seed: int = 42, sampling: dict | None = None,
             greedy: bool = False, max_history: int = MAX_HISTORY, device: str = "auto", dtype: str = "fp32",
             generate: bool = True, progress: bool = True) -> EvalReport:
    """Perplexity and reply metrics of a model folder (or Hub id) on a corpus.

    Args:
        sampling: options over CDial-GPT's setting (`CDIAL_SAMPLING`) for the sampled replies.
        greedy: also generate greedily.
        dtype: see `chatbot.model.precision`; fp32 (the default) scores the model itself, what chat
            runs ("auto", "bf16", "int8") scores that.

    Raises:
        FileNotFoundError: for a missing or incomplete model folder or corpus.
        ValueError: for data without usable dialogues.
    """
    from chatbot.bot import ChatBot
    from chatbot.data.dataset import Subset, load_dataset, make_collate
    from chatbot.distributed import resolve_device
    from chatbot.layout import EXTRA_TOKENS
    from chatbot.model.modeling import context_limit, dialogue_layout, load_model

    device = resolve_device(device)
    model, tokenizer, args = load_model(model_dir, device, dtype)
    layout = dialogue_layout(model.config.model_type, tokenizer, args)
    max_len = context_limit(model, args) - EXTRA_TOKENS[layout]
    dataset = load_dataset(data, tokenizer, max_len=max_len, format=format, split=split, skip_bad=skip_bad,
                           progress=progress)
    indices = sample_indices(len(dataset), num_samples, seed)
    loss_on = loss_on or args.get("loss_on", "all")
    collate = make_collate(tokenizer, loss_on=loss_on, speaker_ids=bool(args.get("speaker_ids")),
                           reverse=bool(args.get("reverse")), layout=layout)
    ppl = evaluate_loss(model, Subset(dataset, indices), collate, batch_size=batch_size, device=device,
                        progress=progress)
    report = EvalReport(str(model_dir), str(data), len(indices), loss_on, ppl)
    if not generate:
        return report
    bot = ChatBot(model, tokenizer, training_args=args, max_history=max_history)
    runs = {"sampled": {**CDIAL_SAMPLING, **(sampling or {})}}
    if greedy:
        runs["greedy"] = {**(sampling or {}), **GREEDY}
    for name, options in runs.items():
        report.generation[name] = evaluate_generation(bot, dataset, indices, sampling=options, seed=seed,
                                                      progress=progress)
    return report
