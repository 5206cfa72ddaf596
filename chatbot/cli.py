"""Console entry points. Each `*_main(argv)` parses flags, then hands plain values to the library.

User mistakes (`ValueError`, `FileNotFoundError`) end with one `error:` line and exit code 2,
never a traceback; argparse uses the same code for bad flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USAGE = 2


def run_command(fn: Callable[[], int | None]) -> int:
    """Run a command body, turning user errors into a message and exit code 2."""
    try:
        return fn() or 0
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """argparse type for counts: the message names the value and the allowed range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
