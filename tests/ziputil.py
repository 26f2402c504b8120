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
    """The environment of a `warpdrive` command run by a test: this checkout's package, and
    bundled models without a spin window (as in the test process: see tests/conftest.py)."""
    return dict(os.environ, PYTHONPATH=str(ROOT), WARPDRIVE_EMU_SPIN_US="0")


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


# Peak RSS of a command and the children it waits for (its device model), from wait4 in a
# small launcher: a child forked straight from a big process (pytest) inherits that process's
# high-water mark through vfork+exec, which would be measured instead.
_LAUNCH = ("import os, subprocess, sys\n"
           "p = subprocess.Popen(sys.argv[2:])\n"
           "_, status, usage = os.wait4(p.pid, 0)\n"
           "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
           "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_peak_rss(argv: list[str], report: Path, **kw: Any) -> tuple[int, int]:
    """(exit status, peak RSS in KiB) of `argv` run through the launcher; `report` is a
    scratch file for the number; other keywords go to subprocess.run."""
    r = subprocess.run([sys.executable, "-c", _LAUNCH, str(report), *argv], **kw)
    return r.returncode, int(report.read_text() or 0)
