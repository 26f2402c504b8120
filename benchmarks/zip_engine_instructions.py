"""The ZIP model's engine per job in instructions and simulated cache misses (issue 11).

    python benchmarks/zip_engine_instructions.py --baseline PATH [--jobs c5,d65536,...]

`DeflateUnit.compress_stateless` / `decompress_stateless` (zlib container, level 6, 32 KiB
window, the benchmarks' text-like sample; a decompression takes the compressed sample), and
pieces (`p`: the first job of a gzip stream ending with a sync flush, as the CLI sends them,
kept in place of the previous one) over a
read-only source view and a writable destination view of one shared mapping, as the model's
DMA gives them, run under valgrind's cachegrind with its cache simulation: instructions (Ir) and
first-level data-cache misses (D1m) per job, each the difference of a run of N jobs and one of
3N divided by 2N (start-up cancels out). Unlike wall or thread CPU time, these do not move with
the load the other engineers put on the shared cores; they do not see the kernel (page faults,
mmap/munmap of large buffers: `ru_stime` is printed for those). `--baseline PATH`: another
checkout measured the same way. Prints a table and one JSON line (`zip_engine_instructions:`).
Needs valgrind (apt install valgrind).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One checkout's jobs, in a fresh interpreter: argv root, op (c|d), size, jobs.
_CHILD = r'''
import mmap, resource, sys, zlib
root, op, size, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [root, root + "/benchmarks"]
from warpdrive.emu.models import _zip_layout as L
from warpdrive.emu.models._deflate import DeflateUnit
from zip_bench import sample
mm = mmap.mmap(-1, 4 << 20)
mv = memoryview(mm)
unit, data = DeflateUnit(6), sample(size)
blob = zlib.compress(data, 6)[2:] if op == "d" else data
mv[:len(blob)] = blob
src, dst = mv[:len(blob)].toreadonly(), mv[2 << 20:4 << 20]
if op == "c":
    job = lambda: unit.compress_stateless(L.ALG_ZLIB, 15, src, dst)
elif op == "p":  # a piece: the first job of a stream, sync flush, kept (replacing an older one)
    job = lambda: unit.keep_first(0, unit.compress_first(L.ALG_GZIP, 15, src, dst, False)[1])
else:
    job = lambda: unit.decompress_stateless(L.ALG_ZLIB, src, dst)
job()
before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
for _ in range(n):
    job()
print("stime_us", (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) / n * 1e6)
'''


def _run(root: Path, op: str, size: int, jobs: int, grind: bool) -> dict[str, float]:
    argv = [sys.executable, "-c", _CHILD, str(root), op, str(size), str(jobs)]
    if grind:
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=yes",
                "--cachegrind-out-file=/dev/null", *argv]
    p = subprocess.run(argv, capture_output=True, text=True, check=True)
    out: dict[str, float] = {}
    if grind:
        for key, label in (("Ir", r"I\s+refs"), ("D1m", r"D1  misses")):
            m = re.search(label + r":\s+([\d,]+)", p.stderr)
            if m is None:
                raise SystemExit(f"valgrind printed no {key}: {p.stderr[-500:]}")
            out[key] = int(m.group(1).replace(",", ""))
    else:
        out["stime_us"] = float(p.stdout.split()[-1])
    return out


def measure(root: Path, op: str, size: int, base_jobs: int) -> dict[str, float]:
    n = max(4, base_jobs // (size // 256 + 1))
    a, b = _run(root, op, size, n, True), _run(root, op, size, 3 * n, True)
    row = {k: round((b[k] - a[k]) / (2 * n)) for k in a}
    row.update(_run(root, op, size, 10 * n, False))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, help="another checkout, measured alongside")
    ap.add_argument("--jobs", default="c5,c4096,c65536,c1048576,d5,d4096,d65536,d1048576",
                    help="ops (c|d|p) and sizes, comma-separated")
    ap.add_argument("--n", type=int, default=2000, help="jobs per run at 256 B (fewer above)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 1
    roots = [("this", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    rows = []
    load = os.getloadavg()
    print(f"{'job':>10} {'checkout':>9} {'Ir/job':>12} {'D1m/job':>9} {'sys us/job':>10}")
    for spec in args.jobs.split(","):
        op, size = spec[0], int(spec[1:])
        for name, root in roots:
            row = {"job": spec, "checkout": name, **measure(root, op, size, args.n)}
            rows.append(row)
            print(f"{spec:>10} {name:>9} {row['Ir']:>12} {row['D1m']:>9} "
                  f"{row['stime_us']:>10.1f}", flush=True)
    print("zip_engine_instructions: " + json.dumps(
        {"load_before": [round(x, 2) for x in load],
         "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
