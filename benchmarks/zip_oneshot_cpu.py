"""CPU per one-shot call on the embedded model, client and model apart (issue 11).

    python benchmarks/zip_oneshot_cpu.py [--calls 3000] [--baseline PATH]

Wall time per call on a shared machine is mostly the scheduler's (a call needs the client and the
model process on a CPU at once); CPU time is not, so this counts thread CPU time: the client's per
call without its completion wait (`OneShot._wait`, or `Lane.wait_until` in older checkouts), the
model's per job (a zip model served with `measure=True`: the CPU of the passes that found work). A
loaded machine inflates both alike (cold caches after every switch); zlib's own time for the same
call is printed beside them as the yardstick. `replay us`: the client alone in wall time, the
device's part of the call (submit, wait, CQE) replaced by a replay of one real job's results
(`OneShot._go`, `_run` in older checkouts): what the call costs above the device's round trip.
`--baseline PATH`: another checkout (e.g. a `git worktree` of an older main), measured in
alternation with this one. Prints a table and one JSON line (`zip_oneshot_cpu: {...}`) with the
load average.

`--breakdown`: where the wall time of one call goes, stamped (`time.perf_counter_ns`, the
CLOCK_MONOTONIC both processes share) in the client and in a zip model served as the embedded
default serves it, over `--calls` calls per row: call start, doorbell stored (`submit_one`
returned), the model sees the SQ doorbell (`QmFunction.doorbell`), its executor starts, zlib
starts and returns (`DeflateUnit.*_stateless`), the executor returns, the CQE is written
(`_post_cqe`), the client sees it (`take_one`), the call returns. Stamps are matched to calls by
time (each lies inside its call), medians and p90 per segment; each stamp is a wrapper (about
0.1-0.2 us, so segments are a little longer than unstamped). Also counted: EQEs/MSIs the model
posted and the client's waits that fell back to the lane's blocking wait. `--cpus split` pins the
client to CPU 0 and the model to CPU 1, `same` both to CPU 0 (the shared-CPU mode of a busy
machine), `free` (default) leaves them to the scheduler.

`--floor`: what no process-separated model written in Python can go below, measured here:
(1) a two-process CPython ping-pong over shared memory (one 64-bit store, spin on one word, each
way; the processes on CPUs 0 and 1), (2) the client's irreducible steps per job (copy the input
into its DMA piece, patch the SQE's length and tag, copy it into the ring, store the doorbell,
one look at a CQE already there, read the result words, copy the output out) and (3) the
model's (load the doorbell word, unpack the SQE, views of the two buffers without any check,
write the result words and the CQE), both in process, best of rounds; (4) zlib's own call, as
the model must make it (output into the client's piece: `decompressobj().decompress` into a
bytes object and a copy, or `compress` and a copy). Floor = (1) + (2) + (3) + (4), against the
goals of issue 11 (<= 15 us at 5 B, <= 1.2x zlib's time at 4 KiB).
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import functools
import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS = ("compress 5", "compress 4096", "decompress 5", "decompress 4096")

# One measurement, run in a fresh interpreter on checkout sys.argv[1]; prints a JSON line.
_CHILD = r'''
import json, os, sys, subprocess, tempfile, time, zlib
root, op, size, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [root, os.path.join(root, "benchmarks")]
from zip_bench import sample
sock = os.path.join(tempfile.mkdtemp(prefix="wd-cpu-"), "m.sock")
serve = ("import sys; sys.path.insert(0, %r)\n"
         "from warpdrive.emu.models.zip import ZipModel\n"
         "from warpdrive.emu.server import VfioUserServer\n"
         "s = VfioUserServer(ZipModel(), %r, exit_on_disconnect=True, measure=True)\n"
         "s.serve_forever()\n"
         "print(s.work_s, s.work_passes, file=sys.stderr)\n") % (root, sock)
model = subprocess.Popen([sys.executable, "-c", serve], stderr=subprocess.PIPE, text=True)
while not os.path.exists(sock):
    time.sleep(0.02)
import warpdrive.zip as wz
from warpdrive.devices.zip import lane as L, oneshot as O
waited = [0.0]
cls, name = (O.OneShot, "_wait") if hasattr(O.OneShot, "_wait") else (L.Lane, "wait_until")
orig = getattr(cls, name)
def timed(self, *a, **k):
    t0 = time.thread_time()
    try:
        return orig(self, *a, **k)
    finally:
        waited[0] += time.thread_time() - t0
setattr(cls, name, timed)
eng = wz.open_engine("vfio-user:" + sock)
data = sample(size)
if op == "decompress":
    blob = zlib.compress(data)
    call, ref = (lambda: wz.decompress(blob, device=eng)), (lambda: zlib.decompress(blob))
else:
    call, ref = (lambda: wz.compress(data, 6, device=eng)), (lambda: zlib.compress(data, 6))
for _ in range(calls // 10):
    call()
waited[0] = 0.0
c0 = time.thread_time()
for _ in range(calls):
    call()
client = time.thread_time() - c0 - waited[0]
z0 = time.thread_time()
for _ in range(calls):
    ref()
zl = time.thread_time() - z0
# The client alone: the device's part replaced by a replay of one real job (its results stay in
# the SQ slot and the output piece), wall time per call, the best of 5 rounds.
one = O.OneShot
go = "_go" if hasattr(one, "_go") else "_run"
real, got = getattr(one, go), {}
def capture(self, *a):
    got["r"], got["slot"] = real(self, *a), self.slot_off
    return got["r"]
setattr(one, go, capture)
call()
def replay(self, *a):
    self.slot_off = got["slot"]
    return got["r"]
setattr(one, go, replay)
best = float("inf")
for _ in range(5):
    r0 = time.perf_counter()
    for _ in range(calls):
        call()
    best = min(best, time.perf_counter() - r0)
setattr(one, go, real)
eng.close()
model.wait()
work_s, passes = model.stderr.read().split()[-2:]
print(json.dumps({"client_us": client / calls * 1e6,
                  "model_us": float(work_s) / max(1, int(passes)) * 1e6,
                  "replay_us": best / calls * 1e6,
                  "zlib_us": zl / calls * 1e6}))
'''


# --breakdown: the model, served as the embedded default serves it, with stamps at each stage of
# a job; it writes them (JSON) when its client leaves. argv: checkout, socket, output path.
_BD_MODEL = r'''
import json, sys, time
root, sock, out = sys.argv[1:4]
sys.path.insert(0, root)
from warpdrive.emu.models import _qm as Q
from warpdrive.emu.models import zip as Z
from warpdrive.emu.server import VfioUserServer
ns = time.perf_counter_ns
S = {k: [] for k in ("seen", "x0", "z0", "z1", "x1", "cqe", "end", "eqe")}
seen_a, x0_a, z0_a, z1_a, x1_a, cqe_a, end_a, eqe_a = (S[k].append for k in S)
SQ = 0  # QM_DB_CMD_SQ
SHIFT = 12  # QM_DB_CMD_SHIFT_V2
model = Z.ZipModel()
setup = model.setup
def stamped_setup():
    setup()
    qm, jobs = model.qm, model.jobs
    db, ex, proc, intr = qm.doorbell, qm.execute, qm.process, qm._interrupt
    def doorbell(v, qn=None):
        if v >> SHIFT & 0xF == SQ:
            seen_a(ns())
        return db(v, qn)
    def execute(q, sq, off):
        x0_a(ns())
        r = ex(q, sq, off)
        x1_a(ns())
        return r
    def process(budget=None):
        r = proc(budget)
        if r:
            end_a(ns())
        return r
    def interrupt(queues):
        intr(queues)
        eqe_a(ns())
    qm.doorbell, qm.execute, qm.process, qm._interrupt = doorbell, execute, process, interrupt
    unit = jobs.unit
    for name in ("compress_stateless", "decompress_stateless"):
        def timed(*a, _f=getattr(unit, name)):
            z0_a(ns())
            r = _f(*a)
            z1_a(ns())
            return r
        setattr(unit, name, timed)
post = Q.QmFunction._post_cqe
def post_cqe(q, cq, slot):
    post(q, cq, slot)
    cqe_a(ns())
Q.QmFunction._post_cqe = staticmethod(post_cqe)
model.setup = stamped_setup
s = VfioUserServer(model, sock, exit_on_disconnect=True)
s.serve_forever()
S["stats"] = dict(model.qm.stats) if model.qm else {}
with open(out, "w") as f:
    json.dump(S, f)
'''

# --breakdown: the client, stamping each call and its doorbell and CQE; argv: checkout, calls,
# output path, CPU placement, then the calls ("compress 5", ...).
_BD_CHILD = r'''
import json, os, sys, subprocess, tempfile, time, zlib
root, calls, out_path, cpus = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
todo = sys.argv[5:]
sys.path[:0] = [root, os.path.join(root, "benchmarks")]
from zip_bench import sample
tmp = tempfile.mkdtemp(prefix="wd-bd-")
sock, mpath = os.path.join(tmp, "m.sock"), os.path.join(tmp, "model.json")
model = subprocess.Popen([sys.executable, "-c", _MODEL, root, sock, mpath])
if cpus != "free":
    os.sched_setaffinity(0, {0})
    os.sched_setaffinity(model.pid, {0} if cpus == "same" else {1})
while not os.path.exists(sock):
    time.sleep(0.02)
ns = time.perf_counter_ns
import warpdrive.zip as wz
from warpdrive.devices.hisi_qm import bringup as B
from warpdrive.devices.hisi_qm.queue import QmQueue
from warpdrive.devices.zip import lane as L
C = {"db": [], "see": []}
slow = {"wait_until": 0, "block": 0}
sub, take = QmQueue.submit_one, QmQueue.take_one
db_a, see_a = C["db"].append, C["see"].append
def submit_one(self, *a, **k):
    r = sub(self, *a, **k)
    db_a(ns())
    return r
def take_one(self, owner):
    see_a(ns())
    return take(self, owner)
QmQueue.submit_one, QmQueue.take_one = submit_one, take_one
for cls, name in ((L.Lane, "wait_until"), (B.QmDevice, "block")):
    def counted(self, *a, _f=getattr(cls, name), _n=name, **k):
        slow[_n] += 1
        return _f(self, *a, **k)
    setattr(cls, name, counted)
eng = wz.open_engine("vfio-user:" + sock)
res = {}
for call in todo:
    op, size = call.split()
    data = sample(int(size))
    blob = zlib.compress(data)
    fn = (lambda: wz.decompress(blob, device=eng)) if op == "decompress" else \
        (lambda: wz.compress(data, 6, device=eng))
    for _ in range(200):
        fn()
    for v in C.values():
        v.clear()
    for k in slow:
        slow[k] = 0
    t0s, t1s = [], []
    a0, a1 = t0s.append, t1s.append
    for _ in range(calls):
        a0(ns())
        fn()
        a1(ns())
    res[call] = {"t0": t0s, "t1": t1s, "db": list(C["db"]), "see": list(C["see"]),
                 "slow": dict(slow)}
eng.close()
model.wait()
with open(mpath) as f:
    m = json.load(f)
with open(out_path, "w") as f:
    json.dump({"client": res, "model": m}, f)
'''

# (name, from stamp, to stamp): the segments of a call, in order; the last two are not in it.
SEGMENTS = (("client: call -> doorbell stored", "t0", "db"),
            ("doorbell -> model sees it", "db", "seen"),
            ("model: seen -> executor starts", "seen", "x0"),
            ("model: executor -> zlib (SQE, views)", "x0", "z0"),
            ("model: zlib", "z0", "z1"),
            ("model: zlib -> executor returns", "z1", "x1"),
            ("model: executor -> CQE written", "x1", "cqe"),
            ("CQE -> client sees it", "cqe", "see"),
            ("client: sees CQE -> returns", "see", "t1"),
            ("total", "t0", "t1"),
            ("(model: CQE -> its pass ends)", "cqe", "end"))


def breakdown(root: Path, calls: int, cpus: str, todo: Sequence[str]) -> dict:
    """One `--breakdown` run on a checkout: {call: {segment: (p50 us, p90 us)}, ...}."""
    with tempfile.TemporaryDirectory(prefix="wd-bd-") as tmp:
        out = os.path.join(tmp, "stamps.json")
        src = "_MODEL = " + repr(_BD_MODEL) + "\n" + _BD_CHILD
        r = subprocess.run([sys.executable, "-c", src, str(root), str(calls), out, cpus, *todo],
                           capture_output=True, text=True, timeout=900)
        if r.returncode or not os.path.exists(out):
            raise SystemExit(f"{root}: breakdown exit {r.returncode}: {r.stderr[-600:]}")
        with open(out) as f:
            d = json.load(f)
    m = d["model"]

    def inside(arr: list[int], lo: int, hi: int) -> int | None:
        i = bisect.bisect_left(arr, lo)
        return arr[i] if i < len(arr) and arr[i] < hi else None

    result: dict = {"model_stats": m.get("stats", {})}
    for call, c in d["client"].items():
        rows = []
        for t0, t1 in zip(c["t0"], c["t1"]):
            st = {"t0": t0, "t1": t1, "db": inside(c["db"], t0, t1),
                  "see": inside(c["see"], t0, t1)}
            for k in ("seen", "x0", "z0", "z1", "x1", "cqe", "end"):
                st[k] = inside(m[k], t0, t1 if k != "end" else t1 + 10**9)
            rows.append(st)
        segs = {}
        for name, a, b in SEGMENTS:
            v = sorted((r[b] - r[a]) / 1000 for r in rows if r[a] is not None and
                       r[b] is not None)
            segs[name] = (round(v[len(v) // 2], 2), round(v[int(len(v) * 0.9)], 2)) if v \
                else (None, None)
        result[call] = {"segments": segs, "slow_waits": c["slow"]}
    return result


def breakdown_main(calls: int, cpus: str, baseline: Path | None, repeat: int) -> int:
    """`--breakdown`: this checkout and `baseline` in alternation, `repeat` times each; the
    median over runs of each segment's p50 and p90."""
    roots = {"this": ROOT} | ({"baseline": baseline.resolve()} if baseline else {})
    before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {k: [] for k in roots}
    for _ in range(repeat):
        for checkout, root in roots.items():
            runs[checkout].append(breakdown(root, calls, cpus, CALLS))
    after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {before}, after {after}; cpus={cpus}, {calls} calls per row, "
          f"{repeat} run(s) per checkout")
    table: dict = {}
    for call in CALLS:
        print(f"{call}: p50 / p90 us" + "".join(f"  {k:>15}" for k in roots))
        for name, _, _ in SEGMENTS:
            cells = []
            for checkout in roots:
                p50, p90 = (round(statistics.median(r[call]["segments"][name][i] or 0
                                                    for r in runs[checkout]), 2) for i in (0, 1))
                table.setdefault(checkout, {}).setdefault(call, {})[name] = [p50, p90]
                cells.append(f"{p50:7.2f} /{p90:7.2f}")
            print(f"  {name:40}" + "".join(f"  {c:>15}" for c in cells))
        for checkout in roots:
            waits = [r[call]["slow_waits"] for r in runs[checkout]]
            print(f"  ({checkout}: blocking waits per run {waits})")
    stats = {k: [r["model_stats"] for r in v] for k, v in runs.items()}
    print("model counters per run (eqes, msis, jobs): " + "; ".join(
        f"{k}: " + ", ".join(f"{s.get('eqes')}/{s.get('msis')}/{s.get('jobs')}" for s in v)
        for k, v in stats.items()))
    print("zip_oneshot_cpu_breakdown: " + json.dumps({
        "load_before": before, "load_after": after, "cpus": cpus, "calls": calls,
        "table": table}))
    return 0


def _pingpong(rounds: int) -> float:
    """Microseconds per round trip between two CPython processes over one shared page: each
    side stores a counter into its word and spins on the other's."""
    mm = mmap.mmap(-1, 4096)
    mine, theirs = ctypes.c_uint64.from_buffer(mm, 0), ctypes.c_uint64.from_buffer(mm, 64)
    cpus = sorted(os.sched_getaffinity(0))
    pid = os.fork()
    if pid == 0:  # the "model": answer each store
        try:
            if len(cpus) > 1:
                os.sched_setaffinity(0, {cpus[1]})
            for i in range(1, rounds + 1):
                while mine.value != i:
                    pass
                theirs.value = i
        finally:
            os._exit(0)
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        t0 = time.perf_counter()
        for i in range(1, rounds + 1):
            mine.value = i
            while theirs.value != i:
                pass
        dt = time.perf_counter() - t0
    finally:
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, old)
        del mine, theirs
        mm.close()
    return dt / rounds * 1e6


def _best(fn: Callable[[], object], number: int) -> float:
    """Microseconds per call, best of 7 rounds."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def floor_rows(size: int, op: str) -> dict:
    """The irreducible steps of one job (see `--floor`), in microseconds."""
    import zlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from zip_bench import sample

    data = sample(size)
    blob = zlib.compress(data, 6)
    inp = data if op == "compress" else blob
    produced = len(blob) if op == "compress" else size
    mem = bytearray(1 << 20)  # stands for the client's DMA memory: SQ, CQ, input, output
    mv = memoryview(mem)
    sq, cq, src, dst = mv[0:128 * 16], mv[4096:4096 + 16 * 16], mv[65536:], mv[524288:]
    sq32, cq16 = sq.cast("I"), cq.cast("H")
    sqe = bytearray(128)
    s32 = memoryview(sqe).cast("I")
    bell = ctypes.c_uint64.from_buffer(mem, 8192)
    cq16[7] = 1  # the CQE is there: the client's one look succeeds
    sq32[1], sq32[3] = produced, 0x100
    res, cqe, u16 = struct.Struct("<4I"), struct.Struct("<IHHHHH"), struct.Struct("<H")
    sqe_s = struct.Struct("<32I")

    def client() -> bytes:
        n = len(inp)
        src[:n] = inp
        s32[4] = n
        s32[2] = 7
        sq[0:128] = sqe
        bell.value = 0x1000 | 1 << 32
        if cq16[7] & 1 == 1:
            got, dw3 = sq32[1], sq32[3]
            if dw3 & 0xFF:
                raise AssertionError
            return bytes(dst[:got])
        raise AssertionError

    last = [0]

    def model() -> None:
        v = bell.value
        if v != last[0]:
            last[0] = 0  # (so every call takes the branch)
        w = sqe_s.unpack_from(sq, 0)
        a, b = src[w[5]:w[5] + w[4] or 1], dst[w[6]:w[6] + 4096]
        res.pack_into(sq, 0, w[4], produced, 0, 0x100)
        cqe.pack_into(cq, 0, 0, 0, 0, 0, 0, 0)
        u16.pack_into(cq, 14, 1)
        a.release()
        b.release()

    if op == "compress":
        def work() -> None:
            out = zlib.compress(data, 6)
            dst[:len(out)] = out
        ref: Callable[[], object] = functools.partial(zlib.compress, data, 6)
    else:
        def work() -> None:
            out = zlib.decompressobj().decompress(blob)
            dst[:len(out)] = out
        ref = functools.partial(zlib.decompress, blob)
    number = 20000 if size < 1000 else 2000
    return {"client_us": _best(client, number), "model_us": _best(model, number),
            "zlib_in_model_us": _best(work, number), "zlib_us": _best(ref, number)}


def floor_main(rounds: int) -> int:
    before = [round(x, 2) for x in os.getloadavg()]
    pp = statistics.median(_pingpong(rounds) for _ in range(3))
    rows = []
    for call in CALLS:
        op, size = call.split()
        r = floor_rows(int(size), op)
        floor = pp + r["client_us"] + r["model_us"] + r["zlib_in_model_us"]
        goal = 15.0 if int(size) < 100 else 1.2 * r["zlib_us"]
        rows.append({"call": call, "pingpong_us": pp, **r, "floor_us": floor, "goal_us": goal,
                     "room_us": goal - r["zlib_in_model_us"]})
    after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {before}, after {after}; ping-pong between CPython processes "
          f"(CPUs {sorted(os.sched_getaffinity(0))[:2]}): {pp:.2f} us per round trip")
    cols = ("client_us", "model_us", "zlib_in_model_us", "zlib_us", "floor_us", "goal_us",
            "room_us")
    print(f"{'call':16}" + "".join(f"{c:>17}" for c in cols))
    for r in rows:
        print(f"{r['call']:16}" + "".join(f"{r[c]:17.2f}" for c in cols))
    print("(room_us: the goal less zlib's work in the model: what the round trip, client and "
          "model steps may cost together)")
    print("zip_oneshot_cpu_floor: " + json.dumps({"load_before": before, "load_after": after,
                                                  "pingpong_us": pp, "rows": rows}))
    return 0


def measure(root: Path, op: str, size: int, calls: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, str(root), op, str(size), str(calls)],
                       capture_output=True, text=True, timeout=600)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        raise SystemExit(f"{root} {op} {size}: exit {r.returncode}: {r.stderr[-400:]}")
    return {k: round(v, 2) for k, v in json.loads(lines[-1]).items()}


def compare(name: str, calls: Sequence[str], baseline: Path | None,
            measure_one: Callable[[Path, str], dict], columns: Sequence[tuple[str, str]]) -> int:
    """Measure every call on this checkout and on `baseline` (if any) in alternation, so load
    drifts reach both alike; print a table of `columns` ((row key, title)) with the load average
    and one JSON line, `name: {...}`. Shared with benchmarks/zip_model_pass.py."""
    roots = {"this": ROOT} | ({"baseline": baseline.resolve()} if baseline else {})
    before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for call in calls:
        for checkout, root in roots.items():
            rows.append({"checkout": checkout, "call": call, **measure_one(root, call)})
    after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {before}, after {after}")
    print(f"{'call':18} {'checkout':9} " + " ".join(f"{t:>10}" for _, t in columns))
    for r in rows:
        print(f"{r['call']:18} {r['checkout']:9} " + " ".join(f"{r[k]:>10}" for k, _ in columns))
    print(f"{name}: " + json.dumps({"load_before": before, "load_after": after, "rows": rows}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--baseline", type=Path, help="another checkout, measured alongside")
    ap.add_argument("--breakdown", action="store_true",
                    help="stamp each stage of a call (see the module docstring)")
    ap.add_argument("--cpus", choices=("free", "split", "same"), default="free",
                    help="--breakdown: where the client and the model run")
    ap.add_argument("--repeat", type=int, default=1, help="--breakdown: runs per checkout")
    ap.add_argument("--floor", action="store_true",
                    help="the irreducible parts of a call (see the module docstring)")
    args = ap.parse_args()
    if args.floor:
        return floor_main(max(args.calls * 30, 100_000))
    if args.breakdown:
        return breakdown_main(args.calls, args.cpus, args.baseline, args.repeat)

    def one(root: Path, call: str) -> dict:
        op, size = call.split()
        return measure(root, op, int(size), args.calls)

    return compare("zip_oneshot_cpu", CALLS, args.baseline, one,
                   (("client_us", "client us"), ("model_us", "model us"), ("zlib_us", "zlib us"),
                    ("replay_us", "replay us")))


if __name__ == "__main__":
    sys.exit(main())
