"""Argument types shared by the command-line scripts (no torch or ray import: `--help` stays fast), and
their one error style: a bad input prints one line `error: ...` and exits with status 2."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

MIN_FREE_BYTES = 1 << 20  # an output folder on a device with less than this free counts as full


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `error: argument --flag: ...`, exit status 2 (its
    subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def add_plugins_arg(parser: argparse.ArgumentParser) -> None:
    """--plugins: modules that register tasks, benchmarks, methods, schedules or fusion rules (aimray.plugins)."""
    parser.add_argument(
        "--plugins",
        metavar="MODULE[,MODULE]",
        help="your modules that register tasks, methods, merge schedules or fusion rules (module names or .py "
        "paths), imported here and in every Ray worker; $AIMRAY_PLUGINS too (README: Extending aimray)",
    )


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers ("1,2,3"); argparse names the flag in the error."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def positive_int(text: str) -> int:
    """An integer >= 1; argparse names the flag in the error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0; argparse names the flag in the error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def check_out_dir(path: str | Path, name: str = "--out") -> None:
    """Raise ValueError naming `name` unless `path` is a folder this process can write, or can be created
    as one, on a device that is not full. Creates nothing (it checks the nearest existing ancestor)."""
    target = Path(path).absolute()
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{name}={str(path)!r}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={str(path)!r}: {probe} is not writable")
    stat = os.statvfs(probe)
    free = stat.f_bavail * stat.f_frsize
    if free < MIN_FREE_BYTES:
        raise ValueError(f"{name}={str(path)!r}: the device of {probe} is full ({free} bytes free)")


def error_text(err: BaseException) -> str:
    """The message of an error for an `error: ...` line: one line (a KeyError's str() would quote it)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__
