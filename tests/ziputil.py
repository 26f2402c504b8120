"""Helpers for the zip tests: run the `warpdrive` command as a user would (a separate process),
and deterministic sample data."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "warpdrive.cli", *args]


def cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None,
        **kw: Any) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cli_argv(*args), input=stdin, env=cli_env(), cwd=cwd, timeout=300,
                          **kw)


def sample(size: int, seed: int = 1) -> bytes:
    """Text-like data (compresses about 3:1)."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:size])
