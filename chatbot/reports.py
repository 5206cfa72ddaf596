"""Rich tables printed at the end of commands (stderr, so stdout stays scriptable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from chatbot.data.corpus import MAX_TURN_CHARS
from chatbot.data.encoded import unk_rate

if TYPE_CHECKING:  # evaluate imports torch; reports is also used by torch-free commands
    from chatbot.evaluate import EvalReport

console = Console(stderr=True)


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


def print_preprocess_summary(meta: dict, output) -> None:
    seconds = max(meta["seconds"], 1e-9)
    rows = [("dialogues read", meta["dialogues"])]
    rows += [(f"skipped: {reason}", n) for reason, n in sorted(meta["skipped"].items())]
    rows += [
        ("turns", meta["turns"]), ("characters", meta["chars"]),
        ("examples written", meta["examples"]), ("tokens", meta["tokens"]),
        ("[UNK] rate", f"{unk_rate(meta):.3%}"),
        ("dialogues split into windows", meta["windowed_dialogues"]),
        ("turns truncated to max_len", meta["truncated_turns"]),
        *([(f"turns cut to {MAX_TURN_CHARS:,} characters while reading", meta["cut_while_reading"])]
          if meta.get("cut_while_reading") else []),
        ("max_len / dtype", f"{meta['max_len']} / {meta['dtype']}"),
        ("time", f"{seconds:.1f} s ({meta['dialogues'] / seconds:,.0f} dialogues/s)"),
        ("output", str(output)),
    ]
    print_table("chatbot-preprocess", rows)


# Above this share of [UNK], the corpus and the vocabulary do not match: clean simplified-Chinese
# corpora stay well under 1% with the shipped vocabulary (data/train.txt: 0%), while 2% is already
# one [UNK] in every few turns, which the model then learns to write.
UNK_WARN_RATE = 0.02


def print_unk_rate(meta: dict, source, *, quiet: bool = False) -> None:
    """The [UNK] share of an encoded dataset (its meta.json), with a warning above UNK_WARN_RATE."""
    rate = unk_rate(meta)
    if not quiet:
        console.print(f"[UNK] rate of {source}: {rate:.1%} "
                      f"({meta['unk_tokens']:,} of {meta['tokens']:,} tokens)",
                      markup=False, highlight=False, soft_wrap=True)
    if rate > UNK_WARN_RATE:
        console.print(f"warning: {rate:.1%} of the tokens are [UNK] (more than {UNK_WARN_RATE:.0%}): "
                      f"the vocabulary lacks many characters of {source} (traditional characters?). "
                      "Build one from the corpus with "
                      f"`chatbot-preprocess {source} --vocab-out my_vocab.txt -o enc` and train with "
                      "--vocab my_vocab.txt (a --pretrained model keeps its own tokenizer)",
                      markup=False, highlight=False, soft_wrap=True)


def print_eval_report(report: EvalReport, examples: int = 0) -> None:
    ppl = report.perplexity
    rows = [("model", report.model), ("data", report.data), ("examples", report.examples)]
    if ppl is not None:
        rows += [(f"perplexity (loss on {report.loss_on})", f"{ppl['ppl']:.2f}"),
                 ("scored tokens", ppl["tokens"])]
    for name, g in report.generation.items():
        m = g.metrics
        options = ", ".join(f"{k}={v}" for k, v in g.options.items())
        rows += [(f"[{name}] {options}", ""),
                 ("  BLEU-1 / 2 / 4", f"{m['bleu-1']:.2f} / {m['bleu-2']:.2f} / {m['bleu-4']:.2f}"),
                 ("  Distinct-1 / 2", f"{m['distinct-1']:.3f} / {m['distinct-2']:.3f}"),
                 ("  average reply length", f"{m['avg_reply_chars']:.1f} characters"),
                 ("  empty / repeated replies", f"{m['empty_share']:.1%} / {m['repeated_share']:.1%}")]
    print_table("chatbot-eval", rows)
    if report.generation:
        console.print(f"BLEU: sacrebleu {next(iter(report.generation.values())).metrics['bleu_signature']}",
                      highlight=False)
    for name, g in report.generation.items():
        for s in g.samples[:examples]:
            history = " / ".join(s["history"])
            console.print(f"[dim]{name}[/dim]  history: {history}\n    reference: {s['reference']}\n"
                          f"    generated: {s['generated']}", highlight=False)
