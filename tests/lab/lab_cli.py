"""`warpdrive ARGS` for lab tests, in this process by default.

In the TCG guest a new interpreter that imports the CLI costs seconds (Python runs 10-20x slower
than on the host), and most checks are about what the command does, not about the process: those
call `main(ARGS)` here with its output captured. `process=True` runs the real console entry
point, for the checks that are about the process (its exit status as a shell sees it).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def wd(*args: str, process: bool = False) -> subprocess.CompletedProcess[str]:
    if process:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("WARPDRIVE_FORBID_SYSFS_WRITES", None)  # the guest is where binding happens
        return subprocess.run([sys.executable, "-m", "warpdrive.cli", *args],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    from warpdrive.cli import main

    assert os.environ.get("WARPDRIVE_FORBID_SYSFS_WRITES") != "1"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["warpdrive", *args], code, out.getvalue(),
                                       err.getvalue())
