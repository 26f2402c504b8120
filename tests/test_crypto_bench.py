"""Host test of benchmarks/crypto_bench.py's syscall counter, on a real strace of a real process
(the hot loop's markers are the same stat() calls the benchmark worker makes)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("crypto_bench",
                                                  ROOT / "benchmarks" / "crypto_bench.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_counts_only_syscalls_between_the_markers() -> None:
    bench = load_bench()
    trace = "\n".join([
        '100 openat(AT_FDCWD, "/etc/x", O_RDONLY) = 3',
        f'100 newfstatat(AT_FDCWD, "{bench.MARK_BEGIN}", 0x7ff, 0) = -1 ENOENT',
        '100 sendmsg(3, {msg_name=NULL}, 0) = 64',
        '101 futex(0x1, FUTEX_WAIT, 0, NULL <unfinished ...>',
        '100 recvfrom(3, "..."..., 64, 0, NULL, NULL) = 64',
        '101 <... futex resumed>) = 0',
        '100 --- SIGCHLD {si_signo=SIGCHLD} ---',
        f'100 newfstatat(AT_FDCWD, "{bench.MARK_END}", 0x7ff, 0) = -1 ENOENT',
        '100 close(3) = 0',
    ])
    assert bench.count_hot_syscalls(trace) == 3


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_counter_on_a_real_trace(tmp_path: Path) -> None:
    bench = load_bench()
    prog = (
        "import os\n"
        "def mark(p):\n"
        "    try: os.stat(p)\n"
        "    except OSError: pass\n"
        f"mark({bench.MARK_BEGIN!r})\n"
        "for _ in range(5): os.getppid()\n"
        "x = sum(range(1000))\n"  # pure computation: no syscall
        f"mark({bench.MARK_END!r})\n"
    )
    out = tmp_path / "trace.txt"
    r = subprocess.run(["strace", "-f", "-qq", "-o", str(out), sys.executable, "-c", prog],
                       capture_output=True, text=True, env={**os.environ})
    if r.returncode != 0 and "ptrace" in r.stderr:
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert bench.count_hot_syscalls(out.read_text()) == 5


def test_host_run_prints_the_table_and_one_json_line() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crypto_bench.py"), "--quick",
                        "--seconds", "0.1", "--no-strace"],
                       capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "WARPDRIVE_IN_LAB"})
    assert r.returncode == 0, r.stderr
    import json

    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith('{"bench"')]
    result = json.loads(line)
    assert result["where"] == "host" and result["loadavg"]["start"]
    paths = {(row["path"], row["size"]) for row in result["rows"]}
    assert ("software", 4096) in paths and ("warpdrive-b1-irq", 65536) in paths
    assert result["ratio"]["emu"]["warpdrive"]["4096"]["median"] > 0
    assert "emu:crypto" in r.stderr  # progress lines as it goes
