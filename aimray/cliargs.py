"""Argument types shared by the command-line scripts (no torch or ray import: `--help` stays fast)."""

from __future__ import annotations

import argparse


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


def error_text(err: BaseException) -> str:
    """The message of an error for an `error: ...` line (a KeyError's str() would quote it)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
