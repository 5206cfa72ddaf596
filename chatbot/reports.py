"""Rich tables printed at the end of commands (stderr, so stdout stays scriptable)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

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
        ("[UNK] rate", f"{meta['unk_tokens'] / max(meta['tokens'], 1):.3%}"),
        ("dialogues split into windows", meta["windowed_dialogues"]),
        ("turns truncated to max_len", meta["truncated_turns"]),
        ("max_len / dtype", f"{meta['max_len']} / {meta['dtype']}"),
        ("time", f"{seconds:.1f} s ({meta['dialogues'] / seconds:,.0f} dialogues/s)"),
        ("output", str(output)),
    ]
    print_table("chatbot-preprocess", rows)
