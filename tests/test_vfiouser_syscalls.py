"""Syscalls the client makes per doorbell, counted with strace on a real client process driving
the real testdev model: a mapped doorbell costs none, a message doorbell exactly one sendmsg
(a posted REGION_WRITE). Uses the benchmark's worker (benchmarks/vfiouser_doorbell.py), which
brackets its hot loop with two stat() markers; only the client process is traced.

The zero-syscall contract holds while the server polls: a server that stopped polling (it does
after `spin_us` without work, which a loaded machine can cause in the middle of a loop by not
running the client) asks for a wake-up kick, one message. So the mapped run gives the server a
spin window longer than the run, and a kick there is a failure; the kick itself is tested in
test_vfiouser_client (test_sleeping_server_is_kicked_once)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "vfiouser_doorbell.py"
JOBS = 200


SPIN_FOR_THE_WHOLE_RUN_US = 600e6


def _syscalls_in_hot_loop(mode: str, tmp_path: Path,
                          *extra: str) -> tuple[Counter[str], dict[str, object]]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    out = tmp_path / f"{mode}.trace"
    res = subprocess.run([strace, "-o", str(out), sys.executable, str(BENCH), "--worker", mode,
                          "--jobs", str(JOBS), "--idle-jobs", "0", *extra],
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=120)
    if res.returncode and "ptrace" in res.stderr:
        pytest.skip(f"strace cannot trace here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    lines = out.read_text().splitlines()
    begin = next(i for i, ln in enumerate(lines) if "@@wd-hot-begin@@" in ln)
    end = next(i for i, ln in enumerate(lines) if "@@wd-hot-end@@" in ln)
    names: Counter[str] = Counter()
    for ln in lines[begin + 1:end]:
        m = re.match(r"(\w+)\(", ln)
        if m:
            names[m.group(1)] += 1
    return names, json.loads(res.stdout.strip().splitlines()[-1])


def test_mapped_doorbell_makes_no_syscall(tmp_path: Path) -> None:
    names, row = _syscalls_in_hot_loop("mapped", tmp_path,
                                       "--spin-us", str(SPIN_FOR_THE_WHOLE_RUN_US))
    assert row["hot_kicks"] == 0, row  # the server never stopped polling: nothing to wake
    # zero in practice; a stray allocator call (brk/mmap) must stay far below one per doorbell
    assert sum(names.values()) <= JOBS // 50, names
    assert "sendmsg" not in names and "write" not in names


def test_message_doorbell_is_one_sendmsg(tmp_path: Path) -> None:
    names, _ = _syscalls_in_hot_loop("message", tmp_path)
    assert names["sendmsg"] == JOBS, names
    assert sum(names.values()) - names["sendmsg"] <= JOBS // 50, names  # nothing else per job


def test_short_sleep_puts_the_threads_timer_slack_back() -> None:
    """`short_sleep` (the one-shot wait's contention naps) sleeps with a 1 us slack and leaves
    the calling thread's own slack as it found it."""
    import time

    from warpdrive import syscalls as sc

    get = sc.PR_GET_TIMERSLACK
    old = sc.libc.prctl(get, 0, 0, 0, 0)
    try:
        assert sc.set_timer_slack(123_456)
        t = time.perf_counter()
        sc.short_sleep(20e-6)
        assert time.perf_counter() - t >= 20e-6
        assert sc.libc.prctl(get, 0, 0, 0, 0) == 123_456
    finally:
        sc.set_timer_slack(old)


def test_yield_watch_naps_only_while_yields_keep_losing_slices() -> None:
    """`YieldWatch`: a lost time slice now and then changes nothing; yields that lose half of
    a window or more turn to naps for NAP_FOR_S, after which yields look again."""
    from warpdrive.syscalls import YieldWatch as W

    w, t = W(), 100.0
    for _ in range(200):  # a lost slice (3 ms) every 50 ms, quick yields between
        w.yielded(t, t + 0.003)
        t += 0.003
        for _ in range(50):
            w.yielded(t, t + 1e-6)
            t += 0.001
    assert w.naps_until < t
    for _ in range(10):  # every yield loses a slice
        w.yielded(t, t + 0.003)
        t += 0.003
    assert t < w.naps_until <= t + W.NAP_FOR_S


def test_the_model_gives_no_memory_back_per_small_job() -> None:
    """A serving model keeps its heap (`syscalls.keep_heap`): zlib's set-up for each small
    stateless job (~270 KiB in 64 KiB pieces) would otherwise go back to the kernel at every
    `deflateEnd` with glibc's default thresholds and come back as fresh pages at the next
    `deflateInit`: two brk(2) per job (~20 us), in a model whose imports happened never to
    raise those thresholds (seen: 52,764 brk calls in 2 s of 5-byte compress calls)."""
    import signal
    import time

    import warpdrive.zip as wz
    from warpdrive.backends.vfiouser.launcher import open_emulated

    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    dev = open_emulated("zip")
    try:
        eng = wz.open_engine(dev, announce=False)
        for _ in range(50):
            wz.compress(b"hello", device=eng)
        tracer = subprocess.Popen([strace, "-f", "-c", "-e", "trace=brk,munmap", "-p",
                                   str(dev.emulator.proc.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # attached
        small = bytes(range(256)) * 16
        for i in range(400):
            wz.compress(b"hello" if i % 2 else small, device=eng)
        tracer.send_signal(signal.SIGINT)
        summary = tracer.communicate(timeout=20)[1]
        eng.close()
    finally:
        dev.close()
    calls = sum(int(line.split()[3]) for line in summary.splitlines()
                if line.split()[-1:] in (["brk"], ["munmap"]))
    assert calls < 40, summary
