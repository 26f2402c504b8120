"""`syscalls.exit_now`: the fast exit of the CLI and the model process keeps what a normal exit
guarantees: the status, buffered output, atexit handlers, and a still-running thread's work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def test_status_buffered_output_and_atexit_survive(tmp_path: Path) -> None:
    mark = tmp_path / "atexit"
    r = run("import atexit, sys\n"
            "from warpdrive.syscalls import exit_now\n"
            f"atexit.register(lambda: open({str(mark)!r}, 'w').write('ran'))\n"
            "sys.stdout.write('x' * 100)\n"  # still in the buffer: stdout is a pipe
            "sys.stderr.write('e')\n"
            "exit_now(3)\n")
    assert r.returncode == 3
    assert r.stdout == "x" * 100 and r.stderr == "e"
    assert mark.read_text() == "ran"


def test_a_running_thread_is_waited_for() -> None:
    r = run("import threading, time, sys\n"
            "from warpdrive.syscalls import exit_now\n"
            "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
            "exit_now(0)\n")
    assert r.returncode == 0 and r.stdout == "thread done\n"
