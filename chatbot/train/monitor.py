"""What a training run reports while it runs: metrics since the last row, metrics files, stop
requests from signals, and a terminal that may go away (`chatbot-train 2>&1 | tee log`, then Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chatbot.distributed import all_reduce_sum
from chatbot.fileio import atomic_write_text, recover_stale_file

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in EXIT_SIGNAL:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C while saving: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextmanager
def survive_closed_output() -> Iterator[None]:
    """Within the block, writing to a stdout or stderr whose reader is gone drops the text instead of raising.

    Ctrl-C on `chatbot-train 2>&1 | tee train.log` kills tee too, and the next progress bar, print or
    table the run writes fails with BrokenPipeError (Python ignores SIGPIPE): raised inside a step, it
    would end the run before StopRequest's checkpoint. Both streams are flushed on the way out, so that
    the interpreter's own flush at exit finds nothing to fail on (it would print "Exception ignored" and
    turn the exit code into 120).
    """
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_DropWhenClosed(s) if s is not None else None for s in saved)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        sys.stdout, sys.stderr = saved


class _DropWhenClosed:
    """A text stream that stops writing, instead of raising, once nobody reads the pipe it feeds."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _silence(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _silence(self._stream)

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... as the stream has them (tqdm, rich)
        return getattr(self._stream, name)


def _silence(stream) -> None:
    """Point `stream`'s file descriptor at the null device, as Python's notes on SIGPIPE advise.

    What it still buffers, and all that is written to it later, then goes nowhere instead of failing
    again. A stream with no descriptor (a test's capture) is left as it is.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


@dataclass
class Window:
    """Sums since the last metrics row.

    They stay on the device: reading them every micro-step would stall a GPU.
    """

    loss: torch.Tensor  # sum of token losses
    labels: torch.Tensor  # scored tokens
    tokens: torch.Tensor  # real (non-padding) tokens
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def on(cls, device: torch.device) -> Window:
        zeros = (torch.zeros((), dtype=d, device=device) for d in (torch.float32, torch.long, torch.long))
        return cls(*zeros)

    def add(self, loss: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor) -> None:
        """Count a micro-batch: its mean token loss, its scored tokens and its real tokens."""
        self.loss += loss.detach() * labels
        self.labels += labels
        self.tokens += tokens

    def totals(self) -> tuple[float, int, float]:
        """(mean token loss, real tokens, tokens per second) over every rank; all ranks call it."""
        loss_sum, labels, tokens = all_reduce_sum([self.loss.item(), self.labels.item(), self.tokens.item()],
                                                  self.loss.device)
        return loss_sum / max(labels, 1), int(tokens), tokens / (time.perf_counter() - self.started)


class MetricsLog:
    """metrics.jsonl on rank 0, plus TensorBoard events or a Weights & Biases run when asked for."""

    def __init__(self, output_dir: Path, enabled: bool, report_to: str = "none",
                 run_config: dict | None = None, start_step: int = 0):
        """Open the log, dropping what a previous run logged past `start_step`.

        Args:
            report_to: "none", "tensorboard" (events in output_dir/runs) or "wandb".
            run_config: the run's settings, recorded by wandb.
            start_step: the step this run starts from (a resumed checkpoint's, else 0): it logs the
                steps after it again, so the old rows of those steps would be duplicates.
        """
        self.enabled, self.report_to, self.board = enabled, report_to, None
        if not enabled:
            return
        drop_rows_after(output_dir / "metrics.jsonl", start_step)
        self.file = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides the events of a step >= purge_step written before this START marker;
            # without it, it shows both runs' values of the steps logged again (torch's event files
            # are version 2, for which it never purges by step order alone).
            self.board = SummaryWriter(str(output_dir / "runs"), purge_step=start_step + 1)
        elif report_to == "wandb":
            import wandb

            self.board = wandb.init(dir=str(output_dir), config=run_config)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in row.items() if k not in ("step", "epoch") and isinstance(v, (int, float))}
        if self.report_to == "tensorboard":
            for key, value in scalars.items():
                self.board.add_scalar(key, value, row["step"])
        elif self.report_to == "wandb":
            self.board.log(scalars, step=row["step"])

    def close(self) -> None:
        if self.enabled and not self.file.closed:
            self.file.close()
            if self.report_to == "wandb":
                self.board.finish()
            elif self.board is not None:
                self.board.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Rewrite metrics file `path` without its rows past `step`, saying how many went.

    The file is replaced atomically (a kill leaves the old one or the new one) and only when a row goes.
    An unterminated last line is a row a kill cut short, past any checkpoint: dropped too. A line that
    is not a row of ours is kept, and so is a file that is not UTF-8 text.
    """
    recover_stale_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except UnicodeDecodeError as e:
        print(f"warning: {path} is not UTF-8 text ({e.reason}), so it is left as it is: it may repeat "
              f"the steps after {step}", file=sys.stderr)
        return
    # Not splitlines(): json.dumps(ensure_ascii=False) leaves U+2028 and friends inside a row's strings.
    *lines, torn = text.split("\n")
    kept = [line for line in lines if not _past(line, step)]
    dropped = len(lines) - len(kept) + bool(torn)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        print(f"dropped {dropped} row{'s' * (dropped != 1)} past step {step} from {path}: this run writes "
              "those steps again", file=sys.stderr)


def _past(line: str, step: int) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step
