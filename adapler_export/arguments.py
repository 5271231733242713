"""The command line's parser class and the value types of its numeric options, shared by every parser
(`cli.py`, `serving/cli_commands.py`, `calibration/cli.py`).

A count below its floor, a port outside 0-65535, a learning rate of zero or a number that is not finite is
refused by argparse itself, before anything loads: one error line naming the option, exit status 2. Without
them `--threads -1` or `--concurrency 0` ended in a traceback, and `--samples -1` silently meant "all but
one". The library checks what it is given as well (`Split.subset`, `CalibrateOptions`, the load test):
these types only make the command line say it first, with the option's name.
"""
from __future__ import annotations

import argparse
import math


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its usage errors on one line, as every other user error of the command line
    (argparse prints the whole usage block first; --help still shows it). Subcommand parsers inherit it."""

    def error(self, message: str):
        # The same prefix as every other user error ("adapler-export: error: "), whichever subcommand.
        command = self.prog.split()[0]
        self.exit(2, f"{command}: error: {message.removeprefix('argument ')} (see {self.prog} --help)\n")


def integer(low: int = 1, high: int | None = None):
    """An integer option in [low, high] (high: no upper bound when None)."""
    span = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    parse.__name__ = "integer"  # what argparse's own fallback message calls the type
    return parse


def number(low: float = 0.0, *, low_allowed: bool = True):
    """A finite number >= low (> low when `low_allowed` is False)."""
    span = f"{'>=' if low_allowed else '>'} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not low_allowed):
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


COUNT = integer(1)  # examples, epochs, batches, threads, clients, repeats
NON_NEGATIVE = number(0.0)  # loss weights, tolerances, delays
POSITIVE = number(0.0, low_allowed=False)  # learning rates, timeouts, durations
SEED = integer(0, 2**32 - 1)  # what numpy's and PyTorch's generators take
PORT = integer(0, 65535)  # 0: a free port, as when the option is left out


THREADS_HELP = "PyTorch intra-op threads (default: all cores; 1 keeps a shared machine responsive)"


def use_threads(threads: int | None) -> None:
    """What `--threads` does, for every command that takes it: PyTorch's intra-op threads (None: leave
    PyTorch's default, all cores). ONNX Runtime sessions take their thread count where they are made."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
