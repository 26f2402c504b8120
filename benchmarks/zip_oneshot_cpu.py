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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    args = ap.parse_args()

    def one(root: Path, call: str) -> dict:
        op, size = call.split()
        return measure(root, op, int(size), args.calls)

    return compare("zip_oneshot_cpu", CALLS, args.baseline, one,
                   (("client_us", "client us"), ("model_us", "model us"), ("zlib_us", "zlib us"),
                    ("replay_us", "replay us")))


if __name__ == "__main__":
    sys.exit(main())
