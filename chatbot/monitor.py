"""What a training run reports while it runs: metrics files, and stop requests from signals."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

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


class MetricsLog:
    """metrics.jsonl on rank 0, plus TensorBoard events when tensorboard is installed."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.enabled, self.board = enabled, None
        if not enabled:
            return
        self.file = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.board = SummaryWriter(str(output_dir / "runs"))
        except ImportError:  # tensorboard is optional
            pass

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.board:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.board.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.board:
                self.board.close()
