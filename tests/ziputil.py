"""Helpers for the zip tests: run the `warpdrive` command as a user would (a separate process),
and deterministic sample data."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """The environment of a `warpdrive` command run by a test: this checkout's package, and
    bundled models without a spin window (as in the test process: see tests/conftest.py)."""
    return dict(os.environ, PYTHONPATH=str(ROOT), WARPDRIVE_EMU_SPIN_US="0")


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "warpdrive.cli", *args]


@contextlib.contextmanager
def listening_process(argv: list[str], sock: str, *, text: bool = False,
                      timeout: float = 30) -> Iterator[subprocess.Popen[Any]]:
    """`argv` in a process of its own (cli_env(), stderr piped), listening on `sock` before the
    body runs (failing at once if it exits first); killed if still alive, reaped and its pipe
    closed after the body."""
    proc = subprocess.Popen(argv, env=cli_env(), stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=text)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            assert proc.poll() is None, f"{argv[2:]} exited before listening on {sock}"
            assert time.monotonic() < deadline, f"{argv[2:]} not listening on {sock}"
            time.sleep(0.01)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


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
