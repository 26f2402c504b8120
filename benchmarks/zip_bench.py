"""ZIP compression jobs: in-process zlib vs warpdrive on the ZIP engine, mapped vs message doorbell.

    python benchmarks/zip_bench.py [--quick] [--device BDF]
    python benchmarks/zip_bench.py --driver [--quick]      # the driver alone (issue 14)

Runs against the bundled ZIP device model (no hardware here), or with `--device` against a ZIP
function bound to vfio-pci (in the lab guest: the model behind QEMU's vfio-user client and the
guest's IOMMU; `model cpu` is then not measured). Rows: job sizes 4 KiB,
64 KiB and 1 MiB of text-like data, batches of 1 and 32 jobs, three modes:

* `zlib`    - `zlib.compress(data, 6, 15)` in this process (the reference; batch is irrelevant;
              glibc's heap trimming and mmap threshold are pinned so zlib's allocations cost
              no syscalls: see `_steady_malloc`).
* `mmap`    - warpdrive zlib-format jobs, the SQ doorbell a 64-bit store into the mapped doorbell
              page the model polls: no syscall, no message.
* `message` - the same, but every doorbell (SQ and CQ) is a posted VFIO_USER_REGION_WRITE.

Both warpdrive modes use prepared zero-copy jobs (`Session.prepare`: the SQE is built once, the
data sits in DMA buffers; every job reads the same input, like the zlib rows, and writes its own
output slot) and busy-poll completions in memory (`wait="spin"`). A batch is
`batch` jobs under one doorbell; two batches are kept in flight, and a batch is resubmitted as
soon as its jobs have completed; at the end of a row the jobs in flight are waited for (and
counted). The client is pinned to CPU 0 and the model process to CPU 1.

Metrics per row (hot loop only; setup, warm-up and checks excluded):
* `mb_s`, `jobs_s`: input bytes and jobs per second of wall time.
* `cpu_us_per_job`: client process CPU (getrusage, user+system) per job. With busy polling this
  includes the time spent spinning while the engine works, so it equals wall time per job.
* `work_us_per_job`: client thread CPU time inside the polls that found completions and the
  resubmissions (submit_many: one doorbell per batch), less what reading that clock costs
  (calibrated in the same process): the driver's own cost per job, without the spinning. Taken
  only in the timed run (reading a CPU clock is a syscall).
* `model_cpu_us_per_job`: the model process's CPU per job (/proc/<pid>/stat).
* `syscalls_per_job`: a separate run of the same hot loop under `strace` (the worker process only,
  not -f: the model is a child process and is not traced; the worker is single-threaded). The loop
  of each row is marked by two stat() calls of impossible paths; every syscall strace logs
  between a row's two markers is counted and divided by that loop's jobs. strace slows syscalls,
  so timing comes from the untraced run.
* Each timed row is the best of 3 runs (1 with --quick): other work on a shared machine only
  ever makes a run slower.

The driver alone (`--driver`, and a second table after the full run on the model): the model
runs its null executor (`executor=null`: every job completes at once, nothing is compressed),
so the driver's cost is not hidden behind the model's. Rows: 4 KiB and 64 KiB prepared jobs
(input and output in DMA memory), batches of 32 (`submit_many`, `poll_many`) and of 1 (one
`submit`, one doorbell, per job), two batches in flight, mmap doorbell. After each batch has
completed (spinning untimed), two timed sections side by side, in alternating order: the
driver's (reap what completed, resubmit it) and Python's floor for as many jobs (`Floor`: one
precompiled `pack_into` of a 128-byte SQE into the same ring, 1/32 of a 64-bit store into the
same doorbell page, one 16-byte CQE unpack from the same CQ). Each is thread CPU time less the
clock's own cost; `work_us_per_job` / `floor_us_per_job` = `ratio`, against issue 14's targets
(batch 32: 1.5x, batch 1: 3x). Best of 3 runs per row (by the driver's time).

The machine is shared and has 2 cores: numbers move with load; ratios measured side by side
hold better. Output: a table, then the last line: one JSON list of rows (keys: mode, size,
batch, mb_s, jobs_s, cpu_us_per_job, syscalls_per_job, plus work_us_per_job and
model_cpu_us_per_job; driver rows: mode "driver", size, batch, jobs, work_us_per_job,
floor_us_per_job, ratio, target, timer_us, executor, load_avg).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = (4 << 10, 64 << 10, 1 << 20)
BATCHES = (1, 32)
MODES = ("zlib", "mmap", "message")
DRIVER_SIZES = (4 << 10, 64 << 10)
DRIVER_TARGETS = {1: 3.0, 32: 1.5}  # issue 14: driver CPU per job <= this many floors
LEVEL = 6


def _mark(tag: str) -> None:
    try:
        os.stat(f"/@@wd-zip-{tag}@@")
    except OSError:
        pass


def sample(size: int) -> bytes:
    words = (b"the queue engine doorbell stream window deflate accelerator of and to in is "
             b"compression job batch ring phase completion mapped message kernel").split()
    out = bytearray()
    i = 7
    while len(out) < size:
        i = (i * 1103515245 + 12345) & 0x7FFFFFFF
        out += words[i % len(words)] + (b"\n" if i % 11 == 0 else b" ")
    return bytes(out[:size])


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row_buffers(s: Any, sizes: tuple[int, ...]) -> tuple[Any, Any, int]:
    """Two DMA buffers for every row (a map costs a syscall-heavy memory check): one source
    holding the largest sample (every job of a row reads the same input, as the zlib rows do)
    and one destination cut into a slot per job in flight. Returns (src, dst, slot size)."""
    big = max(sizes)
    src = s.buffer(big)
    src.view[:big] = sample(big)
    slot = -(-(big + big // 8 + 4096) // 4096) * 4096
    return src, s.buffer(2 * max(BATCHES) * slot), slot


def _pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


# ------------------------------------------------------------------------------- worker side
def zlib_rows(duration: float, count: int | None, mark: bool) -> list[dict[str, Any]]:
    rows = []
    for size in SIZES:
        data = sample(size)
        assert zlib.decompress(zlib.compress(data, LEVEL)) == data
        for batch in BATCHES:
            n = 0
            compress = zlib.compress
            need = jobs_needed(count, size, batch)
            c0, t0 = _cpu(), time.perf_counter()
            end = t0 + duration
            if mark:
                _mark(f"begin-zlib-{size}-{batch}")
            while n < need or (not count and time.perf_counter() < end):
                for _ in range(batch):
                    compress(data, LEVEL)
                n += batch
            if mark:
                _mark(f"end-zlib-{size}-{batch}")
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            rows.append({"mode": "zlib", "size": size, "batch": batch, "jobs": n, "wall": wall,
                         "cpu": cpu, "work": wall, "model_cpu": 0.0})
    return rows


def engine_rows(mode: str, duration: float, count: int | None, mark: bool,
                device: str | None = None) -> list[dict[str, Any]]:
    import warpdrive.zip as wz

    if device:
        eng = wz.open_engine(device, doorbell=mode, wait="spin", announce=False)
    else:
        eng = wz.open_engine("emu", doorbell=mode, wait="spin", announce=False,
                      model_options={"level": str(LEVEL)})
    rows = []
    try:
        emulator = getattr(eng.source.dev, "emulator", None)  # type: ignore[attr-defined]
        model_pid = emulator.proc.pid if emulator is not None else None
        _pin(0, 0)
        if model_pid is not None:
            _pin(model_pid, 1)
        s = eng.session("compress", wbits=15)
        src, dst, slot = _row_buffers(s, SIZES)
        for size in SIZES:
            data = sample(size)
            assert bytes(src.view[:size]) == data
            for batch in BATCHES:
                jobs = [s.prepare(src, size, dst, dst_offset=i * slot, dst_length=slot)
                        for i in range(2 * batch)]  # two batches in flight
                rows.append(_hot_loop(s, jobs, batch, size, mode, duration, count, mark,
                                      model_pid))
                out = bytes(jobs[0].output)
                assert zlib.decompress(out) == data, "engine output does not decompress"
        s.close()
    finally:
        eng.close()
    return rows


def jobs_needed(count: int | None, size: int, batch: int) -> int:
    """Jobs a row must run at least: two batches; with a fixed count (the strace run), that
    count scaled to the job size (128 jobs of 4 KiB -> 8 of 64 KiB), at least two batches."""
    if not count:
        return 2 * batch
    return max(2 * batch, count * 4096 // size)


def _hot_loop(s: Any, jobs: list[Any], batch: int, size: int, mode: str, duration: float,
              count: int | None, mark: bool, model_pid: int | None) -> dict[str, Any]:
    submit_many, poll_many = s.submit_many, s.poll_many
    clock = time.perf_counter
    # Work time is thread CPU time (immune to preemption on a busy machine) minus what reading
    # that clock costs (a syscall: calibrated in this process); the strace run (mark) skips it.
    tclock = (lambda: 0) if mark else time.thread_time_ns
    overhead = 0.0 if mark else timer_overhead()
    completed = s.lane.q.completed  # one load: is a CQE waiting?

    def cycle(need: int, until: float) -> tuple[int, float]:
        """Keep two batches in flight until `need` jobs were submitted and `until` passed,
        then let the ones in flight finish; returns (jobs completed, work seconds)."""
        submit_many(jobs)
        submitted, n, work, sections = len(jobs), 0, 0, 0
        pending: list[Any] = []
        while n < submitted:
            if not completed():
                continue
            t0 = tclock()
            n += poll_many(pending)
            if len(pending) >= batch and (submitted < need or clock() < until):
                submit_many(pending)  # one doorbell for the batch
                submitted += len(pending)
                pending.clear()
            work += tclock() - t0
            sections += 1
        return n, max(work - sections * overhead, 0.0) / 1e9

    submit_many(jobs[:2])  # warm up: queue started, model spinning
    s.drain()
    need = jobs_needed(count, size, batch)
    c0, m0, t0 = _cpu(), _proc_cpu(model_pid), clock()
    if mark:
        _mark(f"begin-{mode}-{size}-{batch}")
    n, work = cycle(need, 0.0 if count else t0 + duration)
    if mark:
        _mark(f"end-{mode}-{size}-{batch}")
    wall = clock() - t0
    cpu, mcpu = _cpu() - c0, _proc_cpu(model_pid) - m0
    for j in jobs:
        if j.error is not None:
            raise j.error
    return {"mode": mode, "size": size, "batch": batch, "jobs": n, "wall": wall, "cpu": cpu,
            "work": work, "model_cpu": mcpu}


def timer_overhead(n: int = 4000) -> float:
    """What one timed section's pair of thread_time_ns() calls costs, in ns (mean: it is
    subtracted from sums)."""
    t = time.thread_time_ns
    total = 0
    for _ in range(n):
        a = t()
        total += t() - a
    return total / n


def best_ns_each(fn: Any, n: int = 64000) -> float:
    """Thread CPU ns per unit of `fn(n)` (which does n units), best of 5 runs."""
    clock = time.thread_time_ns
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        fn(n)
        best = min(best, clock() - t0)
    return best / n


# ------------------------------------------------------------------- the driver alone (--driver)
class Floor:
    """Python's floor for one job, on the queue's own memory: one precompiled
    `struct.pack_into` of a 128-byte SQE into a ring slot, 1/32 of a 64-bit store into the
    mapped doorbell page, one 16-byte CQE unpack from the CQ. The slots and CQEs used are half
    a ring away from the jobs in flight (the device reads neither), and the doorbell store
    repeats the last SQ doorbell (the same tail: no new work for the device)."""

    def __init__(self, q: Any, sqe: bytes) -> None:
        from warpdrive.devices.hisi_qm import regs as qm
        from warpdrive.devices.zip import hw

        self.q = q
        self.args = hw.SQE.unpack(sqe)
        self.pack = hw.SQE.pack_into
        self.unpack = qm.CQE.unpack_from
        self.sq = q.sq
        lay = q.layout
        self.cq = q.mem[lay.cq_offset:lay.cq_offset + qm.CQE_SIZE * lay.cq_depth]
        self.cell = q.doorbell._cell  # the raw 64-bit store (no wake-up check): the floor
        self.owed = 0

    def places(self, n: int) -> list[tuple[int, int]]:
        """(SQE offset, CQE offset) for `n` floor jobs, away from the jobs in flight."""
        q = self.q
        s0, c0 = (q.tail + q.sq_depth // 2) % q.sq_depth, (q.cq_head + q.cq_depth // 2)
        return [((s0 + i) % q.sq_depth * q.sqe_size, (c0 + i) % q.cq_depth * 16)
                for i in range(n)]

    def run(self, places: list[tuple[int, int]], db: int) -> None:
        pack, unpack, args, sq, cq = self.pack, self.unpack, self.args, self.sq, self.cq
        for so, co in places:
            pack(sq, so, *args)
            unpack(cq, co)
        self.owed += len(places)
        while self.owed >= 32:
            self.cell.value = db
            self.owed -= 32

    def close(self) -> None:
        self.cq.release()


def driver_rows(duration: float) -> list[dict[str, Any]]:
    """The driver's CPU per job with the model's null executor (jobs complete without being
    compressed), the floor measured side by side, and their ratio."""
    import warpdrive.zip as wz
    from warpdrive.devices.hisi_qm import regs as qm

    executor = "null"
    eng = wz.open_engine("emu", doorbell="mmap", wait="spin", announce=False,
                         model_options={"executor": executor})
    rows = []
    try:
        model_pid = eng.source.dev.emulator.proc.pid
        _pin(0, 0)
        _pin(model_pid, 1)
        s = eng.session("compress", wbits=15)
        src, dst, slot = _row_buffers(s, DRIVER_SIZES)
        for size in DRIVER_SIZES:
            for batch in BATCHES:
                jobs = [s.prepare(src, size, dst, dst_offset=i * slot, dst_length=slot)
                        for i in range(2 * batch)]
                s.submit_many(jobs[:2])  # warm up: queue started, model spinning
                s.drain()
                kicks = getattr(eng.source.dev, "kicks", 0)
                row = _driver_row(s, jobs, batch, size, duration, qm.doorbell_v2)
                # Wake-up kicks (a message: a syscall) sent because the model had stopped
                # polling: they belong to the driver's cost, and should be ~0 while jobs flow.
                kicks = getattr(eng.source.dev, "kicks", 0) - kicks
                rows.append(dict(row, executor=executor,
                                 kicks_per_job=round(kicks / row["jobs"], 4)))
        rows.append(check_costs(s, jobs))
        s.close()
    finally:
        eng.close()
    return rows


def check_costs(s: Any, jobs: list[Any]) -> dict[str, Any]:
    """What each safety check of the hot path costs: the check's own code, timed alone in a loop
    on this session's queue and jobs (idle: nothing in flight), thread CPU time, best of 5.
    Per job at batch 32 (a check made once per call or per doorbell counts 1/32) and at batch 1
    (once per job)."""
    import threading

    q = s.lane.q
    batch = jobs[:32]
    k = len(batch)
    acquire, release = s.lane.acquire, s.lane.release
    sq32, flags = q.sq32, q._flags
    wake = q.doorbell._wake
    tag_dw, dw = s._tag_dw, q.sqe_size >> 2
    qjobs = list(batch)
    done_well = {0x100, 0x10D}
    fence = threading.Lock()
    f_acquire, f_release = fence.acquire, fence.release

    # -- once per call or per doorbell (n calls) -----------------------------------------------
    def session_open(n: int) -> None:
        for _ in range(n):
            if s._closed:
                pass

    def tx_stop(n: int) -> None:
        for _ in range(n):
            if flags[1]:
                pass

    def lane_lock(n: int) -> None:
        for _ in range(n):
            acquire()
            release()

    def wake_check(n: int) -> None:
        for _ in range(n):
            f_acquire()
            f_release()
            if wake is not None and wake.flag._cell.value:
                pass

    def status_tag_one(n: int) -> None:
        j = batch[0]
        for _ in range(n):
            if sq32[3] in done_well and sq32[tag_dw] == j.tag:
                pass

    # -- per job, a batch at a time (n jobs) ---------------------------------------------------
    def owned_idle(n: int) -> None:
        for _ in range(n // k):
            for j in batch:
                if j.ready is not s:
                    pass
                j.ready = None
            for j in batch:
                j.ready = s

    def slot_has_job(n: int) -> None:
        for _ in range(n // k):
            if None in qjobs:
                pass

    owners, depth = [s] * len(qjobs), len(qjobs)

    def one_slot_owned(n: int) -> None:  # take_one: slot in range, holds a job of ours
        s0 = 1
        for _ in range(n):
            if s0 >= depth:
                pass
            if qjobs[s0] is None or owners[s0] is not s:
                pass

    def tag_column(n: int) -> None:
        for _ in range(n // k):
            if sq32[tag_dw:k * dw:dw].tolist() != [j.tag for j in batch]:
                pass

    def status_column(n: int) -> None:
        for _ in range(n // k):
            col = sq32[3:k * dw:dw].tolist()
            if col.count(0x100) + col.count(0x10D) != k:
                pass

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    cost = best_ns_each
    loop = cost(empty)  # the loop around a per-call check is not the check
    # (name, its code, timed per job already?, occurrences per job at batch 32, at batch 1)
    checks: list[tuple[str, Any, bool, float, float]] = [
        ("session open, engine not closed or forked (each submit)", session_open, False,
         1 / k, 1),
        ("lane lock, thread safety (each submit and each reap)", lane_lock, False, 2 / k, 2),
        ("queue not stopped: TX-stop flag (each doorbell)", tx_stop, False, 1 / k, 1),
        ("server still polls: fence + need-wakeup load (each doorbell)", wake_check, False,
         1 / k, 1),
        ("job owned by the session and not in flight (each job)", owned_idle, True, 1, 1),
        ("CQE names a slot holding a job (a run of slots)", slot_has_job, True, 1, 0),
        ("CQE names a slot holding a job of the session (one CQE)", one_slot_owned, False, 0,
         1),
        ("SQE still carries the job's tag (a column)", tag_column, True, 1, 0),
        ("status says finished well (a column)", status_column, True, 1, 0),
        ("status and tag of one job (job by job)", status_tag_one, False, 0, 1),
    ]
    out = []
    for name, fn, per_job, occ32, occ1 in checks:
        ns = cost(fn) - (0.0 if per_job else loop)
        out.append({"check": name, "ns": round(ns, 1), "ns_per_job_batch32": round(ns * occ32, 1),
                    "ns_per_job_batch1": round(ns * occ1, 1)})
    return {"mode": "checks", "checks": out}


def _driver_row(s: Any, jobs: list[Any], batch: int, size: int, duration: float,
                doorbell: Any) -> dict[str, Any]:
    q = s.lane.q
    floor = Floor(q, jobs[0].sqe)
    completed, poll_many, submit_many, submit = q.completed, s.poll_many, s.submit_many, \
        s.submit
    got: list[Any] = []
    submit_many(jobs[:batch])
    submit_many(jobs[batch:])

    def drive() -> int:
        """The driver's work for one turn: reap what completed, resubmit it."""
        k = poll_many(got)
        if batch == 1:  # one doorbell per job
            for job in got:
                submit(job)
        else:
            submit_many(got)
        got.clear()
        return k

    def ready() -> None:
        while not completed(batch):  # untimed: the model works, the driver spins
            pass

    def floor_run() -> tuple[Any, tuple[Any, ...]]:
        # Slots half a ring away; the doorbell store repeats the tail rung last (command 0 =
        # SQ): the device's view does not move.
        return floor.run, (floor.places(batch), doorbell(q.qn, 0, q.rung_tail))

    r = side_by_side(ready, drive, floor_run, duration, batch)
    s.drain()
    floor.close()
    for j in jobs:
        if j.error is not None:
            raise j.error
    return {"mode": "driver", "size": size, "batch": batch, "jobs": r["ops"],
            "work_us_per_job": r["work_us"], "floor_us_per_job": r["floor_us"],
            "ratio": r["ratio"], "target": DRIVER_TARGETS[batch], "timer_us": r["timer_us"]}


def side_by_side(ready: Any, drive: Any, floor: Any, duration: float,
                 batch: int) -> dict[str, Any]:
    """The driver's CPU per op beside Python's floor: turn after turn until `duration` has
    passed (and at least 50 turns), `ready()` (untimed: spins until a batch has completed),
    then two timed sections in alternating order (the first after a spin, often after being
    descheduled on a busy machine, finds colder caches): `drive()` (returns the ops it did)
    and one floor run for `batch` ops (`floor()`, untimed, returns the function and its
    arguments). Thread CPU time less what reading that clock costs (calibrated before and
    after)."""
    tclock, clock = time.thread_time_ns, time.perf_counter
    over = timer_overhead()
    drv = flr = n = turns = 0
    end = clock() + duration
    while clock() < end or turns < 50:
        ready()
        if turns & 1:
            fn, args = floor()
            t2 = tclock()
            fn(*args)
            t3 = tclock()
            t0 = tclock()
            k = drive()
            t1 = tclock()
        else:
            t0 = tclock()
            k = drive()
            t1 = tclock()
            fn, args = floor()
            t2 = tclock()
            fn(*args)
            t3 = tclock()
        drv += t1 - t0
        flr += t3 - t2
        n += k
        turns += 1
    over = (over + timer_overhead()) / 2
    d = max(drv - turns * over, 0.0) / n / 1e3
    f = max(flr - turns * over, 1.0) / (turns * batch) / 1e3
    return {"ops": n, "work_us": round(d, 3), "floor_us": round(f, 3),
            "ratio": round(d / f, 2), "timer_us": round(over / 1e3, 3)}


def _steady_malloc() -> None:
    """Keep glibc from trimming the heap top and from mmap-ing large blocks: otherwise each
    zlib.compress may grow and shrink the heap (brk) or mmap/munmap its buffers, depending on
    where earlier allocations happened to land. This makes the zlib reference its fastest and
    steadiest (a harder target), and is applied to every worker alike."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 512 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def worker(mode: str, duration: float, count: int | None, mark: bool,
           device: str | None = None) -> None:
    _steady_malloc()
    if mode == "driver":
        rows = driver_rows(duration)
    elif mode == "zlib":
        rows = zlib_rows(duration, count, mark)
    else:
        rows = engine_rows(mode, duration, count, mark, device)
    print(json.dumps(rows))


# ------------------------------------------------------------------------------- driver side
def run_worker(mode: str, duration: float, count: int | None, strace: bool,
               device: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    cmd = [sys.executable, __file__, "--worker", mode, "--duration", str(duration)]
    if device:
        cmd += ["--device", device]
    if count:
        cmd += ["--count", str(count)]
    trace = None
    if strace:
        fd, trace = tempfile.mkstemp(prefix="wd-zip-strace-", suffix=".txt")
        os.close(fd)
        cmd = ["strace", "-qq", "-o", trace, *cmd, "--mark"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0:
        raise SystemExit(f"worker {mode} failed:\n{r.stderr[-3000:]}")
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    text = None
    if trace is not None:
        text = Path(trace).read_text()
        os.unlink(trace)
    return rows, text


def count_syscalls(trace: str, mode: str, size: int, batch: int) -> int:
    row = f"{mode}-{size}-{batch}"
    begin, end = f"/@@wd-zip-begin-{row}@@", f"/@@wd-zip-end-{row}@@"
    n, inside = 0, False
    for line in trace.splitlines():
        if begin in line:
            inside = True
            continue
        if end in line:
            return n
        if inside and not re.match(r"^(\d+\s+)?<\.\.\. \w+ resumed>", line) and \
                not line.startswith(("+++", "---")):
            n += 1
    raise SystemExit(f"strace markers for {mode}/{size}/{batch} not found")


def main() -> None:
    ap = argparse.ArgumentParser(description="ZIP engine benchmark")
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    ap.add_argument("--driver", action="store_true",
                    help="only the driver alone: its CPU per job against the model's null "
                    "executor, Python's floor beside it, their ratio")
    ap.add_argument("--worker", choices=(*MODES, "driver"), help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mark", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", metavar="BDF",
                    help="a ZIP function bound to vfio-pci instead of the bundled model")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.duration, args.count or None, args.mark, args.device)
        return
    duration = 0.25 if args.quick else 1.5
    reps = 1 if args.quick else 3
    load0 = os.getloadavg()[0]
    if args.driver:
        drows = best_driver_rows(duration, reps)
        print_driver(drows, load0, reps)
        print(json.dumps(drows))
        return
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed (needed for the syscall counts)")
    strace_jobs = 96 if args.quick else 512
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for _ in range(reps):  # best of `reps` per row: the machine is shared
        for mode in MODES:
            for r in run_worker(mode, duration, None, strace=False, device=args.device)[0]:
                key = (mode, r["size"], r["batch"])
                if key not in best or r["jobs"] / r["wall"] > best[key]["jobs"] / \
                        best[key]["wall"]:
                    best[key] = r
    out_rows = []
    for mode in MODES:
        traced, trace = run_worker(mode, duration, strace_jobs, strace=True, device=args.device)
        assert trace is not None
        for t in traced:
            r = best[(mode, t["size"], t["batch"])]
            sc = count_syscalls(trace, mode, r["size"], r["batch"])
            jobs = r["jobs"]
            out_rows.append({
                "mode": mode, "size": r["size"], "batch": r["batch"],
                "mb_s": round(jobs * r["size"] / r["wall"] / 1e6, 2),
                "jobs_s": round(jobs / r["wall"], 1),
                "cpu_us_per_job": round(r["cpu"] / jobs * 1e6, 2),
                "syscalls_per_job": round(sc / t["jobs"], 3),
                "work_us_per_job": round(r["work"] / jobs * 1e6, 2),
                "model_cpu_us_per_job": round(r["model_cpu"] / jobs * 1e6, 2),
            })
    hdr = ["mode", "size", "batch", "MB/s", "jobs/s", "cpu us/job", "work us/job",
           "model cpu us/job", "syscalls/job"]
    lines = [hdr]
    for r in out_rows:
        lines.append([r["mode"], _size(r["size"]), str(r["batch"]), f"{r['mb_s']:.1f}",
                      f"{r['jobs_s']:.0f}", f"{r['cpu_us_per_job']:.1f}",
                      f"{r['work_us_per_job']:.1f}", f"{r['model_cpu_us_per_job']:.1f}",
                      f"{r['syscalls_per_job']:.3f}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(hdr))]
    for row in lines:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print(f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end "
          f"({os.cpu_count()} CPUs); best of {reps} timed run(s) per row")
    print(_verdict(out_rows))
    drows: list[dict[str, Any]] = []
    if not args.device:  # the null executor is the bundled model's
        print()
        load1 = os.getloadavg()[0]
        drows = best_driver_rows(duration, reps)
        print_driver(drows, load1, reps)
    print(json.dumps(out_rows + drows))


def best_driver_rows(duration: float, reps: int) -> list[dict[str, Any]]:
    """Driver-alone rows, each the run (of `reps`) where the driver took the least CPU: other
    work on a shared machine only ever makes it slower. Ratios come from one run each."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    load = os.getloadavg()[0]
    for _ in range(reps):
        for r in run_worker("driver", duration, None, strace=False)[0]:
            if r["mode"] == "checks":  # the cheapest of the runs, check by check
                for c in r["checks"]:
                    if c["check"] not in checks or c["ns"] < checks[c["check"]]["ns"]:
                        checks[c["check"]] = c
                continue
            key = (r["size"], r["batch"])
            if key not in best or r["work_us_per_job"] < best[key]["work_us_per_job"]:
                best[key] = r
    load = max(load, os.getloadavg()[0])
    rows = [best[(size, b)] for size in DRIVER_SIZES for b in BATCHES]
    for r in rows:
        r["load_avg"] = round(load, 2)
    return [*rows, {"mode": "checks", "checks": list(checks.values())}]


def print_driver(rows: list[dict[str, Any]], load0: float, reps: int) -> None:
    hdr = ["size", "batch", "jobs", "driver us/job", "floor us/job", "ratio", "target", ""]
    lines = [hdr]
    checks = [c for r in rows if r["mode"] == "checks" for c in r["checks"]]
    rows = [r for r in rows if r["mode"] == "driver"]
    for r in rows:
        ok = "ok" if r["ratio"] <= r["target"] else "MISSED"
        lines.append([_size(r["size"]), str(r["batch"]), str(r["jobs"]),
                      f"{r['work_us_per_job']:.3f}", f"{r['floor_us_per_job']:.3f}",
                      f"{r['ratio']:.2f}x", f"<= {r['target']:.1f}x", ok])
    widths = [max(len(row[i]) for row in lines) for i in range(len(hdr))]
    print(f"driver alone (model executor: {rows[0]['executor']}; mmap doorbell; prepared jobs "
          "in DMA memory; thread CPU per job, timer cost subtracted)")
    for row in lines:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print(f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end "
          f"({os.cpu_count()} CPUs); best of {reps} run(s) per row; floor = one precompiled "
          "pack_into of a 128-byte SQE + 1/32 of a 64-bit doorbell store + one 16-byte CQE "
          f"unpack, timed beside each driver section; timer {rows[0]['timer_us']:.3f} us "
          "per section subtracted from both")
    print()
    print("what each safety check on the hot path costs (its code alone, thread CPU, best of "
          "5 loops)")
    lines = [["check", "ns each", "ns/job batch 32", "ns/job batch 1"]]
    for c in checks:
        lines.append([c["check"], f"{c['ns']:.0f}", f"{c['ns_per_job_batch32']:.0f}",
                      f"{c['ns_per_job_batch1']:.0f}"])
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    for row in lines:
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                       zip(row[1:], widths[1:])]))
    t32 = sum(c["ns_per_job_batch32"] for c in checks)
    t1 = sum(c["ns_per_job_batch1"] for c in checks)
    print(f"all checks: {t32:.0f} ns/job at batch 32, {t1:.0f} ns/job at batch 1")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _verdict(rows: list[dict[str, Any]]) -> str:
    def get(mode: str, size: int, batch: int) -> dict[str, Any]:
        return next(r for r in rows if (r["mode"], r["size"], r["batch"]) == (mode, size, batch))

    notes = []
    mm_sys = max(r["syscalls_per_job"] for r in rows if r["mode"] == "mmap")
    notes.append(f"mmap syscalls/job max {mm_sys:.3f} (target 0)")
    w = [get("mmap", s, 32)["work_us_per_job"] for s in SIZES]
    c = [get("mmap", s, 32)["cpu_us_per_job"] for s in SIZES]
    notes.append(f"mmap batch-32 client work {min(w):.1f}-{max(w):.1f} us/job, CPU incl. "
                 f"spinning {min(c):.1f}-{max(c):.1f} us/job (target <= 2)")
    for s in SIZES[1:]:
        best = max(get("mmap", s, b)["mb_s"] for b in BATCHES)
        ref = max(get("zlib", s, b)["mb_s"] for b in BATCHES)
        model = min(get("mmap", s, b)["model_cpu_us_per_job"] for b in BATCHES)
        note = f"{_size(s)}: mmap {best / ref * 100:.0f}% of in-process zlib MB/s (target >= 90%)"
        if model:  # not measured on a device (--device): no model process to read
            eff = min(get("zlib", s, b)["cpu_us_per_job"] for b in BATCHES) / model
            note += (f"; zlib CPU / model CPU per job = {eff * 100:.0f}% (the engine's own "
                     "efficiency, independent of how much CPU it got)")
        notes.append(note)
    for b in BATCHES:
        ratio = get("mmap", 4096, b)["jobs_s"] / get("message", 4096, b)["jobs_s"]
        notes.append(f"4 KiB batch {b}: mmap/message jobs/s = {ratio:.2f}x (target >= 3x)")
    return "\n".join(notes)


if __name__ == "__main__":
    main()
