"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_root_options(parser: argparse.ArgumentParser) -> None:
    """Hidden --sysfs-root/--dev-root: point a command at a fake tree (tests only)."""
    parser.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)
    parser.add_argument("--dev-root", default="/dev", help=argparse.SUPPRESS)


def bdf_arg(text: str) -> str:
    """argparse type of a PCI address: normalised; a malformed one is a usage error (exit 2)."""
    from ..errors import InvalidArgumentError
    from ..pci.names import normalize_bdf

    try:
        return normalize_bdf(text)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def nonnegative_seconds(text: str) -> float:
    """argparse type of a timeout: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
