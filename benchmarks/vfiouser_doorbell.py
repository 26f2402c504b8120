"""vfio-user doorbells: one doorbell -> completion round trip, mapped vs message doorbells.

    python benchmarks/vfiouser_doorbell.py [--quick]

Runs on the host (no lab needed) against the bundled `testdev` model, one model process per
mode, through the public API (`open_emulated`, `Device.map_bar`, `Mmio.doorbell`, `dma.alloc`):

* `mapped`  (`mmap_doorbells=True`): the doorbell is a 64-bit store into the sparse-mmap page the
  model polls: no syscall, no message.
* `message` (`mmap_doorbells=False`): every register access is a message; the doorbell is one
  posted VFIO_USER_REGION_WRITE (No_reply), i.e. one sendmsg.

A round trip is: write a 32-byte descriptor into the ring (client memory), ring the doorbell, and
spin on the descriptor's status word in client memory until the model (copying 64 bytes by DMA)
writes it. Measured twice:
* `hot`: back to back, so the server is inside its spin window (`poll_spin_s`, 20 ms);
* `idle`: after 40 ms of quiet, so the server sleeps in select() and polls every `poll_idle_s`
  (1 ms): a mapped doorbell waits for the next poll, a message wakes the server at once.
The idle server's CPU use (model process, over 1 s) is reported too: the price of polling.

Syscalls per doorbell are counted in a separate run under `strace` (the worker only: the model
process is not traced), between two stat() markers around the hot loop, divided by its jobs.

Output: a table, then one JSON line (`{"bench": "vfiouser_doorbell", ...}`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARK_BEGIN = "/@@wd-hot-begin@@"
MARK_END = "/@@wd-hot-end@@"


def _mark(path: str) -> None:
    try:
        os.stat(path)
    except OSError:
        pass


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(mode: str, hot_jobs: int, idle_jobs: int,
           spin_us: float | None = None) -> dict[str, object]:
    from warpdrive.backends.vfiouser.launcher import open_emulated
    from warpdrive.emu.models import testdev as T

    dev = open_emulated("testdev", mmap_doorbells=(mode == "mapped"), spin_us=spin_us)
    try:
        bar = dev.map_bar(0)
        dev.enable_bus_master()
        size = 64
        ring = dev.dma.alloc(size * T.DESC_SIZE)
        data = dev.dma.alloc(8192)
        bar.write64(T.REG_RING_BASE, ring.iova)
        bar.write32(T.REG_RING_SIZE, size)
        doorbell = bar.doorbell(T.DOORBELL_TAIL, 64)
        view = ring.view
        pack_into = T.DESC.pack_into
        src, dst = data.iova, data.iova + 4096
        tail = 0

        def one() -> None:
            nonlocal tail
            slot = (tail % size) * T.DESC_SIZE
            pack_into(view, slot, src, dst, 64, 0, 0, 0)
            tail += 1
            doorbell.ring(tail)
            st = view[slot + 24:slot + 28]
            while st == b"\0\0\0\0":
                st = view[slot + 24:slot + 28]

        for _ in range(50):  # warm up
            one()
        hot: list[float] = []
        kicks = dev.kicks
        _mark(MARK_BEGIN)
        for _ in range(hot_jobs):
            t0 = time.perf_counter()
            one()
            hot.append(time.perf_counter() - t0)
        _mark(MARK_END)
        # Wake-up kicks in the hot loop: a mapped doorbell sends one (a syscall) only when the
        # server had stopped polling, e.g. when the machine was too busy to run it for `spin_us`.
        hot_kicks = dev.kicks - kicks
        idle: list[float] = []
        for _ in range(idle_jobs):
            time.sleep(0.04)
            t0 = time.perf_counter()
            one()
            idle.append(time.perf_counter() - t0)
        idle_cpu = 0.0
        if idle_jobs:  # what an idle, polling server costs
            pid = dev.emulator.proc.pid
            time.sleep(0.1)
            c0 = _cpu_seconds(pid)
            time.sleep(1.0)
            idle_cpu = _cpu_seconds(pid) - c0
        assert int.from_bytes(dev.region_read(0, T.REG_COMPLETED, 8), "little") == tail
    finally:
        dev.close()
    us = [x * 1e6 for x in hot]
    ius = [x * 1e6 for x in idle]
    return {
        "mode": mode, "jobs": hot_jobs, "hot_kicks": hot_kicks,
        "hot_median_us": statistics.median(us),
        "hot_p99_us": sorted(us)[int(len(us) * 0.99) - 1],
        "idle_median_us": statistics.median(ius) if ius else None,
        "idle_max_us": max(ius) if ius else None,
        "idle_server_cpu_pct": idle_cpu * 100,
    }


def count_syscalls(mode: str, jobs: int) -> tuple[float, dict[str, int]]:
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "trace")
        subprocess.run([strace, "-o", out, sys.executable, __file__, "--worker", mode,
                        "--jobs", str(jobs), "--idle-jobs", "0"], check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        lines = Path(out).read_text().splitlines()
    begin = next(i for i, ln in enumerate(lines) if MARK_BEGIN in ln)
    end = next(i for i, ln in enumerate(lines) if MARK_END in ln)
    names: dict[str, int] = {}
    for ln in lines[begin + 1:end]:
        m = re.match(r"(\w+)\(", ln)
        if m:
            names[m.group(1)] = names.get(m.group(1), 0) + 1
    return sum(names.values()) / jobs, names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", choices=("mapped", "message"), help=argparse.SUPPRESS)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--idle-jobs", type=int, default=30)
    ap.add_argument("--spin-us", type=float, help="the server's spin window (default: the model's)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.jobs, args.idle_jobs, args.spin_us)))
        return 0
    jobs = 1000 if args.quick else args.jobs
    rows = []
    for mode in ("mapped", "message"):
        res = subprocess.run([sys.executable, __file__, "--worker", mode, "--jobs", str(jobs),
                              "--idle-jobs", str(10 if args.quick else args.idle_jobs)],
                             check=True, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        row = json.loads(res.stdout.strip().splitlines()[-1])
        per, names = count_syscalls(mode, 200)
        row["syscalls_per_doorbell"] = per
        row["syscalls"] = names
        rows.append(row)
    print(f"{'mode':8} {'hot median':>11} {'hot p99':>9} {'idle median':>12} {'idle max':>9} "
          f"{'idle cpu':>9} {'syscalls/db':>12}")
    for r in rows:
        print(f"{r['mode']:8} {r['hot_median_us']:9.1f}us {r['hot_p99_us']:7.1f}us "
              f"{r['idle_median_us']:10.1f}us {r['idle_max_us']:7.1f}us "
              f"{r['idle_server_cpu_pct']:8.1f}% {r['syscalls_per_doorbell']:12.2f}")
    print(json.dumps({"bench": "vfiouser_doorbell", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
