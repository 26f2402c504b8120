"""A file gzip(1) made (one member, no size hints: one stream) decompressed as users do it
(issue 11): `warpdrive decompress -c` against `gzip -dc` and `pigz -dc`, and GzipFile reads
against `gzip.open` and `zlib.decompressobj`.

    python benchmarks/zip_one_member.py [--mb 100,500] [--rounds 3] [--base DIR] [--skip-api]

CLI: the mixed file of zip_user_bench (text, noise, zeros in 1 MiB pieces) compressed by
`gzip -6`; each round runs every tool once, in turn (ours, then `--base`'s checkout of the
package if given, gzip -d, pigz -d), output to /dev/null; wall seconds, CPU seconds (user +
system of the command and the children it waited for: our device model included) and peak RSS
from os.wait4. Ratios: each tool's best round against gzip -d's best. The package's bytecode
is compiled first (as an install does).

API (in-process, the embedded default): the 100 MB file read through `warpdrive.zip.open` in
reads of 8 KiB (what tarfile's and BufferedReader's reads come to) and 1 MiB, against
`gzip.open`, and `decompressobj` loops over 128 KiB reads (without and with max_length 64 KiB, fed
the unconsumed_tail again), ours against zlib's (speed ratio of each one's best round), in turn
per round; the best round of each.

Prints a table and one JSON line (`zip_one_member: {...}`) with the load average before and
after. Goal (issue 11): the CLI >= 1.0x gzip -d on such files, GzipFile as fast as gzip.open.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
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

from zip_user_bench import mixed_file  # noqa: E402


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(argv: list[str], inp: Path, env: dict[str, str] | None) -> tuple[float, float, float]:
    """(wall s, CPU s of the command and its waited-for children, peak RSS MB). Run in the
    input's directory: `python -m` puts the working directory first on the import path, so a
    run from a checkout would import that checkout's package whatever PYTHONPATH says."""
    with open(inp, "rb") as i, open(os.devnull, "wb") as o:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=i, stdout=o, stderr=subprocess.PIPE, env=env,
                             cwd=inp.parent)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        err = p.stderr.read() if p.stderr else b""
        if p.stderr:
            p.stderr.close()
    if status:
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode(errors='replace')[:300]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def one_member(tmp: Path, mb: int) -> Path:
    """The mixed file of `mb` MB as `gzip -6` compresses it (one member), in `tmp`."""
    src = tmp / f"mixed{mb}.bin"
    mixed_file(src, mb)
    gz = tmp / f"gzip1-{mb}.gz"
    with open(gz, "wb") as f:
        subprocess.run(["gzip", "-6", "-c", str(src)], stdout=f, check=True)
    src.unlink()
    return gz


def cli_rows(mb: int, rounds: int, base: Path | None, tmp: Path) -> list[dict]:
    gz = one_member(tmp, mb)
    tools: dict[str, tuple[list[str], dict[str, str] | None]] = {}
    for name, tree in (("warpdrive", ROOT), ("base", base)):
        if tree is not None:
            tools[name] = ([sys.executable, "-m", "warpdrive.cli", "decompress", "-c", "-q"],
                           dict(os.environ, PYTHONPATH=str(tree)))
    for tool in ("gzip", "pigz"):
        if shutil.which(tool):
            tools[f"{tool} -d"] = ([tool, "-dc"], None)
    got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in tools}
    for _ in range(rounds):
        for name, (argv, env) in tools.items():
            got[name].append(run(argv, gz, env))
    gz.unlink()
    ref = min(w for w, _, _ in got["gzip -d"]) if "gzip -d" in got else None
    rows = []
    for name, runs in got.items():
        best = min(w for w, _, _ in runs)
        rows.append({"op": f"cli decompress {mb} MB", "tool": name, "best_s": round(best, 3),
                     "walls_s": [round(w, 3) for w, _, _ in runs],
                     "cpu_s": round(min(c for _, c, _ in runs), 3),
                     "max_rss_mb": round(max(r for _, _, r in runs), 1),
                     "vs_gzip_d": round(ref / best, 3) if ref else None})
    return rows


def api_rows(rounds: int, tmp: Path) -> list[dict]:
    import warpdrive.zip as wz

    gz = one_member(tmp, 100)

    def reads(opener: Callable[..., object], n: int) -> Callable[[], int]:
        def go() -> int:
            total = 0
            with opener(gz) as f:  # type: ignore[attr-defined]
                while chunk := f.read(n):  # type: ignore[attr-defined]
                    total += len(chunk)
            return total
        return go

    def stream_loop(mod: object, max_length: int = 0) -> Callable[[], int]:
        """A decompressobj loop over 128 KiB reads, as programs stream (urllib3's content
        decoding, tarfile through zlib); with `max_length`, fed its unconsumed_tail again."""
        def go() -> int:
            d, total = mod.decompressobj(31), 0  # type: ignore[attr-defined]
            with open(gz, "rb") as f:
                while block := f.read(128 << 10):
                    while True:
                        total += len(d.decompress(block, max_length))
                        block = d.unconsumed_tail
                        if not block:
                            break
            while max_length and (more := d.decompress(b"", max_length)):
                total += len(more)
            return total
        return go

    cases = {"warpdrive.zip.open 8 KiB reads": reads(wz.open, 8 << 10),
             "gzip.open 8 KiB reads": reads(gzip.open, 8 << 10),
             "warpdrive.zip.open 1 MiB reads": reads(wz.open, 1 << 20),
             "gzip.open 1 MiB reads": reads(gzip.open, 1 << 20),
             "wz.decompressobj 128 KiB calls": stream_loop(wz),
             "zlib.decompressobj 128 KiB calls": stream_loop(zlib),
             "wz.decompressobj 128K, max 64K": stream_loop(wz, 64 << 10),
             "zlib.decompressobj 128K, max 64K": stream_loop(zlib, 64 << 10)}
    wz.decompress(gzip.compress(b"start the engine"), 31)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    gz.unlink()
    rows = [{"op": "api read 100 MB", "tool": name, "best_s": round(min(t), 3),
             "walls_s": [round(x, 3) for x in t]} for name, t in times.items()]
    for r in rows:  # decompressobj: speed against zlib's, each one's best round
        if r["tool"].startswith("wz."):
            r["vs_zlib"] = round(min(times["zlib." + r["tool"][3:]]) / r["best_s"], 3)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", default="100,500", help="CLI file sizes (MB, comma-separated)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=Path, help="another checkout's package to run alongside")
    ap.add_argument("--skip-api", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    if not shutil.which("gzip"):
        raise SystemExit("gzip(1) is needed to make the one-member files")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "warpdrive")],
                   check=True, stdout=subprocess.DEVNULL)
    before = load()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="zip-one-member-") as d:
        if not args.skip_cli:
            for mb in (int(x) for x in args.mb.split(",") if x):
                rows += cli_rows(mb, args.rounds, args.base, Path(d))
        if not args.skip_api:
            rows += api_rows(args.rounds, Path(d))
    after = load()
    print(f"{'op':24s} {'tool':32s} {'best s':>7s} {'CPU s':>6s} {'RSS MB':>7s} "
          f"{'vs gzip -d':>10s}")
    for r in rows:
        ratio = f"{r['vs_gzip_d']:.2f}x" if r.get("vs_gzip_d") else \
            f"{r['vs_zlib']:.2f}x zlib" if r.get("vs_zlib") else ""
        cpu = f"{r['cpu_s']:.2f}" if "cpu_s" in r else ""
        rss = f"{r['max_rss_mb']:.0f}" if "max_rss_mb" in r else ""
        print(f"{r['op']:24s} {r['tool']:32s} {r['best_s']:7.3f} {cpu:>6s} {rss:>7s} {ratio:>10s}")
    print("zip_one_member: " + json.dumps({"load_before": before, "load_after": after,
                                            "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
