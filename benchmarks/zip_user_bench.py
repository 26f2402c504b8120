"""warpdrive.zip as users meet it, against the tools they would otherwise use (issue 11).

    python benchmarks/zip_user_bench.py [--quick] [--skip-cli] [--cli-mb 500]

API (in-process, the embedded default: the bundled model over vfio-user): one-shot
`compress`/`decompress` against the stdlib's `zlib` (level 6 both) at 5 B, 4 KiB, 64 KiB and
1 MiB; each pair timed alternately in rounds, the median kept, and the ratio taken within the
round (so machine load cancels out). Every call runs on the engine (no size goes to the CPU).

CLI (separate processes on the same cores): `warpdrive compress -c` against `pigz -c -p NCPU`
and `warpdrive decompress -c` against `gzip -dc` on a mixed file (text, binary, zeros),
outputs to /dev/null; wall time and the run's peak RSS (os.wait4: the command and its device
model), the two tools in turn for each round, the ratio of each one's best round (until
2026-12-02 11:25 it was the best of the rounds' paired ratios, which credited us with a slow
round of theirs: the three final runs of session 19 printed CLI compress 1.11x, 0.96x, 1.00x
pigz, where each tool's best round gives 1.04x, 0.96x, 0.93x); then a 1 GiB-of-zeros gzip
bomb through `warpdrive decompress`. The package's bytecode is compiled first (as an install
compiles it; a checkout run with PYTHONDONTWRITEBYTECODE recompiled it in every run). pigz
missing: that row
says so and is skipped. The decompression goal is judged on our compression's output (members
of 2 MiB, `cli.zip.MEMBER`, that state their size, decompressed several at once); a row for a
file gzip(1) made (one member: one stream, decompressed job after job) is printed for
information.

Model idle CPU: after the API rows, once the model's spin window has run out, the CPU the
model process uses in 2 s with no client working (its sleeping loop's periodic polls), as a
percentage of one core (`model_idle_cpu_pct`); it should be near 0.

Measured 2026-12-02 (stream, issue 11 large calls), always with the 2 cores shared by three
other engineers' suites, so every figure moved with their load (4-16); before = main at a3d17ad,
after = main with stream's changes, `--quick --cli-mb 500`, one run after the other:
- 06:50-06:55 (after = 698a358; load 12 -> 6): API decompress 1 MiB 0.81x -> 1.00x zlib's
  speed, compress 1 MiB 0.61x -> 0.70x, 64 KiB 1.03x -> 0.95x; CLI decompress 0.48x -> 0.83x
  gzip -d (a gzip(1) file 1.23x), CLI compress 0.56x -> 0.51x pigz.
- 07:13-07:20 (after = 6324718, with oneshot's one-shot path; load 5 -> 11): API decompress
  1 MiB 0.98x -> 0.85x, compress 1 MiB 0.52x -> 0.82x, 64 KiB 0.84x -> 0.95x; CLI compress
  1.15x -> 0.76x pigz, decompress 0.58x -> 0.69x gzip -d.
The CLI interleaved instead (before's CLI, after's, then pigz or gzip, in turn on one 200 MB
mixed file, 2 rounds, medians; 07:22-07:26, load 5-11): decompress 0.38x -> 0.58x gzip -d
(6.84 s -> 4.41 s; gzip 2.58 s), compress 0.94x -> 0.86x pigz (pigz itself took 14.7 s and
33.6 s in the two rounds: noise). The 64 KiB decompress (0.2x) is the one-shot round trip, not
the inflate: in-process the model's job costs what zlib.decompress costs (64 us vs 86 us).
Session 19 (stream: the model's thread sleeps while its workers are busy, the CLI copies
nothing), the full run, 10:15-10:19, load 9.1 -> 5.2: CLI compress 1.33x pigz (500 MB, 9.12 s
vs 12.12 s), decompress 1.36x gzip -d, max RSS 61.8 MB, bomb 49.5 MB (docs/driver-bench.md).

Prints a table and one JSON line (`zip_user_bench: {...}`) with the load average before and
after. Goals (issue 11): 5 B <= 15 us; 4 KiB <= 1.2x zlib's time (one-shot goals: the worse of
compress and decompress); decompress >= 0.8x and
compress >= 0.95x zlib's speed at >= 64 KiB; CLI compress >= 1.0x pigz, decompress >= 1.0x
gzip -d; peak RSS <= 100 MB both ways and for the bomb.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# the same text-like data as the engine and broker benchmarks
from zip_bench import sample  # noqa: E402

GOALS = {"oneshot_5B_us": 15.0, "oneshot_4KiB_time_ratio": 1.2, "decompress_speed_ratio": 0.8,
         "compress_speed_ratio": 0.95, "cli_compress_vs_pigz": 1.0,
         "cli_decompress_vs_gzip": 1.0, "max_rss_mb": 100.0}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def per_call(fn: Callable[[], object], budget: float) -> float:
    """Seconds per call: as many calls as fit in `budget` seconds (at least 3)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= budget and n >= 3:
            return dt / n


CODEC_ENV = "WARPDRIVE_MODEL_CODEC"  # the model's codec for whole-buffer jobs (emu/models/_deflate)


def codec_env(codec: str | None) -> dict[str, str]:
    """The environment a model (or a CLI run, which starts its own) gets for `codec`."""
    env = dict(os.environ)
    if codec:
        env[CODEC_ENV] = codec
    return env


def api_rows(quick: bool, codecs: list[str | None]) -> list[dict]:
    """One engine per codec (its model started with that codec; None: as configured), each
    timed in turn with zlib in every round."""
    import warpdrive.zip as wz

    engines = {}
    for codec in codecs:
        saved = dict(os.environ)
        os.environ.update(codec_env(codec))
        try:
            # opened once, as a program's first call would
            engines[codec] = wz.default_engine() if codec is None else \
                wz.open_engine("emu", announce=False)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    rounds = 3 if quick else 7
    budget = 0.05 if quick else 0.2
    rows = []
    for size in (5, 4096, 65536, 1 << 20):
        data = sample(size)
        blob = zlib.compress(data, 6)
        for op in ("compress", "decompress"):
            theirs = functools.partial(zlib.compress, data, 6) if op == "compress" else \
                functools.partial(zlib.decompress, blob)
            ours = {c: functools.partial(wz.compress, data, 6, device=e) if op == "compress"
                    else functools.partial(wz.decompress, blob, device=e)
                    for c, e in engines.items()}
            t_ours: dict[str | None, list[float]] = {c: [] for c in ours}
            ratios: dict[str | None, list[float]] = {c: [] for c in ours}
            t_theirs = []
            for _ in range(rounds):
                mine = {}
                for c, fn in ours.items():
                    if len(ours) > 1:
                        # the other codec's model asleep first: a model spins up to 0.2 s
                        # (poll_spin_s) after its last job, and that core is not ours to time
                        time.sleep(0.25)
                    mine[c] = per_call(fn, budget)
                b = per_call(theirs, budget)
                t_theirs.append(b)
                for c, a in mine.items():
                    t_ours[c].append(a)
                    ratios[c].append(a / b)
            for c in ours:
                rows.append({"op": op, "size": size, **({"codec": c} if c else {}),
                             "ours_us": round(statistics.median(t_ours[c]) * 1e6, 1),
                             "zlib_us": round(statistics.median(t_theirs) * 1e6, 1),
                             "time_ratio": round(statistics.median(ratios[c]), 3),
                             "speed_ratio": round(1 / statistics.median(ratios[c]), 3)})
    for c, e in engines.items():
        if c is not None:
            e.close()
    return rows


def model_idle_cpu() -> float | None:
    """Percent of one core the default engine's model process uses while no client works."""
    import psutil

    procs = [p for p in psutil.Process().children(recursive=True)
             if "warpdrive.emu" in " ".join(p.cmdline())]
    if not procs:
        return None  # hardware, or a model we did not start
    time.sleep(0.5)  # longer than the longest spin window (poll_spin_s)
    t0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    time.sleep(2.0)
    return round((sum(sum(p.cpu_times()[:2]) for p in procs) - t0) / 2.0 * 100, 2)


def mixed_file(path: Path, mb: int) -> None:
    """Text, incompressible and zero runs, interleaved in 1 MiB pieces."""
    rng = random.Random(7)
    text = sample(1 << 20)
    with open(path, "wb") as f:
        for i in range(mb):
            kind = i % 10
            if kind < 6:
                f.write(text[i % 1000:] + text[:i % 1000])
            elif kind < 9:
                f.write(rng.randbytes(1 << 20))
            else:
                f.write(bytes(1 << 20))


# wait4 in a small launcher: a child vforked from this (bigger) process would report this
# process's RSS high-water mark instead of its own.
_LAUNCH = ("import os, subprocess, sys\n"
           "p = subprocess.Popen(sys.argv[2:])\n"
           "_, status, usage = os.wait4(p.pid, 0)\n"
           "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
           "sys.exit(os.waitstatus_to_exitcode(status))\n")


def timed(argv: list[str], stdin: Path | None, cwd: Path,
          codec: str | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the command and the children it waited for, status)."""
    env = dict(codec_env(codec), PYTHONPATH=str(ROOT))
    report = cwd / "rss.txt"
    with open(os.devnull, "wb") as null, \
            (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as inp:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _LAUNCH, str(report), *argv], stdin=inp,
                           stdout=null, stderr=subprocess.PIPE, cwd=cwd, env=env)
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(f"  {' '.join(argv)} exited {r.returncode}: "
              f"{r.stderr.decode(errors='replace').strip()[:300]}", file=sys.stderr)
    return wall, int(report.read_text() or 0) / 1024, r.returncode


def cli_rows(mb: int, quick: bool, codecs: list[str | None]) -> tuple[list[dict], dict]:
    wd = [sys.executable, "-m", "warpdrive.cli"]
    ncpu = os.cpu_count() or 1
    pigz, gzip = shutil.which("pigz"), shutil.which("gzip")
    rows: list[dict] = []
    extra: dict = {}
    # The package's bytecode first, as an install (pip) compiles it: with
    # PYTHONDONTWRITEBYTECODE set and a checkout never compiled, each CLI run and its model
    # compiled ~60 modules from source (~0.17 CPU-s and ~0.15 s of the run's start, measured
    # 2026-12-02), a cost no installed CLI pays and pigz, a binary, never does.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "warpdrive")],
                   check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="zip-user-bench-") as d:
        tmp = Path(d)
        src = tmp / "mixed.bin"
        mixed_file(src, mb)
        gz = tmp / "mixed.bin.gz"
        subprocess.run([*wd, "compress", "-q", "-f", str(src)], check=True,
                       env=dict(codec_env(codecs[0]), PYTHONPATH=str(ROOT)))
        rounds = 1 if quick else 2
        # Also a file gzip(1) made (one member, no member sizes): decompressed as one stream,
        # for information (the goal is judged on our own compression's output).
        gz1 = tmp / "gzip1.gz"
        if gzip:
            with open(gz1, "wb") as f:
                subprocess.run([gzip, "-6", "-c", str(src)], stdout=f, check=True)
        pairs = [("compress", [*wd, "compress", "-c", "-q"], src,
                  [pigz, "-c", "-p", str(ncpu)] if pigz else None, "pigz"),
                 ("decompress", [*wd, "decompress", "-c", "-q"], gz,
                  [gzip, "-dc"] if gzip else None, "gzip -d"),
                 ("decompress gzip(1) file", [*wd, "decompress", "-c", "-q"], gz1,
                  [gzip, "-dc"] if gzip else None, "gzip -d (info)")]
        for op, ours_argv, inp, theirs_argv, theirs_name in pairs:
            if theirs_argv is None:
                rows.append({"op": f"cli {op}", "skipped": f"{theirs_name} is not installed"})
                continue
            walls_o: dict[str | None, list[float]] = {c: [] for c in codecs}
            rss_o: dict[str | None, list[float]] = {c: [] for c in codecs}
            walls_t, rss_t = [], []
            for _ in range(rounds):
                for codec in codecs:  # (each codec's run, then theirs: interleaved)
                    w_o, r_o, c_o = timed(ours_argv, inp, tmp, codec)
                    if c_o:
                        raise SystemExit(f"cli {op} failed")
                    walls_o[codec].append(w_o)
                    rss_o[codec].append(r_o)
                w_t, r_t, c_t = timed(theirs_argv, inp, tmp)
                if c_t:
                    raise SystemExit(f"cli {op} failed")
                walls_t.append(w_t)
                rss_t.append(r_t)
            for codec in codecs:
                wo = walls_o[codec]
                rows.append({"op": f"cli {op}", "vs": theirs_name, "mb": mb,
                             **({"codec": codec} if codec else {}),
                             "ours_s": round(min(wo), 2), "theirs_s": round(min(walls_t), 2),
                             "ours_MBps": round(mb * 1.048576 / min(wo), 1),
                             "theirs_MBps": round(mb * 1.048576 / min(walls_t), 1),
                             # each tool's best round against the other's: the best of the
                             # paired ratios would credit us with a slow round of theirs
                             "speed_ratio": round(min(walls_t) / min(wo), 3),
                             "ours_max_rss_mb": round(max(rss_o[codec]), 1),
                             "theirs_max_rss_mb": round(max(rss_t), 1)})
        extra["compressed_size_ours"] = gz.stat().st_size
        for codec in codecs[1:]:  # the other codecs' compressed sizes
            with open(tmp / "other.gz", "wb") as f:
                subprocess.run([*wd, "compress", "-c", "-q", str(src)], stdout=f, check=True,
                               env=dict(codec_env(codec), PYTHONPATH=str(ROOT)))
            extra[f"compressed_size_ours_{codec}"] = (tmp / "other.gz").stat().st_size
        if gzip:
            extra["compressed_size_gzip6"] = gz1.stat().st_size
        if pigz:
            pz = tmp / "pigz.gz"
            with open(pz, "wb") as f:
                subprocess.run([pigz, "-c", "-p", str(ncpu), str(src)], stdout=f, check=True)
            extra["compressed_size_pigz"] = pz.stat().st_size
        src.unlink()
        # the bomb: 1 GiB of zeros in about 1 MiB of gzip
        bomb = tmp / "bomb.gz"
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        with open(bomb, "wb") as f:
            for _ in range(256 if quick else 1024):
                f.write(c.compress(zeros))
            f.write(c.flush())
        w, rss, code = timed([*wd, "decompress", "-c", "-q"], bomb, tmp)
        rows.append({"op": "cli decompress bomb", "mb": 256 if quick else 1024,
                     "ours_s": round(w, 2), "ours_max_rss_mb": round(rss, 1), "status": code})
    return rows, extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller CLI files")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--cli-mb", type=int, default=None, help="CLI file size (default 500)")
    ap.add_argument("--codec", default=None,
                    help="the model's codec(s) for whole-buffer jobs, comma-separated for an "
                    "interleaved A/B (e.g. libdeflate,libz; the first is judged); default: "
                    f"as configured (${CODEC_ENV}, else the model's default)")
    args = ap.parse_args()
    codecs: list[str | None] = args.codec.split(",") if args.codec else [None]
    before = load()
    api = api_rows(args.quick, codecs)
    idle = model_idle_cpu()
    cli, extra = ([], {}) if args.skip_cli else cli_rows(
        args.cli_mb or (64 if args.quick else 500), args.quick, codecs)
    after = load()
    print(f"load average before {before}, after {after}; {os.cpu_count()} CPUs")
    extra["model_idle_cpu_pct"] = idle
    print(f"model process idle: {idle} % of one core")
    print(f"{'op':12} {'size':>8} {'codec':>10} {'ours us':>10} {'zlib us':>10} {'time x':>7} "
          f"{'speed x':>7}")
    for r in api:
        print(f"{r['op']:12} {r['size']:>8} {r.get('codec') or '-':>10} {r['ours_us']:>10} "
              f"{r['zlib_us']:>10} {r['time_ratio']:>7} {r['speed_ratio']:>7}")
    for r in cli:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    verdict = {}
    judged = codecs[0]  # (an A/B run judges its first codec)
    japi = [r for r in api if r.get("codec", judged) == judged]
    jcli = [r for r in cli if r.get("codec", judged) == judged]
    # One-shot goals hold for both calls: the worse of compress and decompress is judged.
    verdict["oneshot_5B_us"] = max(r["ours_us"] for r in japi if r["size"] == 5)
    verdict["oneshot_4KiB_time_ratio"] = max(r["time_ratio"] for r in japi if r["size"] == 4096)
    verdict["decompress_speed_ratio"] = min(r["speed_ratio"] for r in japi
                                            if r["op"] == "decompress" and r["size"] >= 65536)
    verdict["compress_speed_ratio"] = min(r["speed_ratio"] for r in japi
                                          if r["op"] == "compress" and r["size"] >= 65536)
    for r in jcli:
        if r.get("vs") == "pigz":
            verdict["cli_compress_vs_pigz"] = r["speed_ratio"]
        if r.get("vs") == "gzip -d":
            verdict["cli_decompress_vs_gzip"] = r["speed_ratio"]
    rss = [r[k] for r in jcli for k in ("ours_max_rss_mb",) if k in r]
    if rss:
        verdict["max_rss_mb"] = max(rss)
    met = {k: (v <= GOALS[k] if k in ("oneshot_5B_us", "oneshot_4KiB_time_ratio", "max_rss_mb")
               else v >= GOALS[k]) for k, v in verdict.items()}
    print("verdict:", ", ".join(f"{k}={v} ({'met' if met[k] else 'MISSED'}, goal {GOALS[k]})"
                                for k, v in verdict.items()))
    print("zip_user_bench: " + json.dumps({"load_before": before, "load_after": after,
                                           "cpus": os.cpu_count(), "api": api, "cli": cli,
                                           "extra": extra, "verdict": verdict, "met": met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
