"""Compress every file under a directory on a ZIP engine, many jobs in flight, and verify each.

    python examples/compress_files.py DIR [--out OUTDIR] [--format gzip|zlib|deflate]
                                          [--device BDF|hisi_zip-N|emu] [--batch 32]

Files up to one job (7 MiB) are submitted as batch-session jobs: `--batch` of them per doorbell,
completions reaped as they arrive while the next batch is queued. Larger files go through stream
mode. Every result is checked by decompressing it with Python's own zlib (an independent
decoder) and comparing with the original. With no hardware the bundled model is used (a note on
stderr says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import warpdrive.zip as wz
from warpdrive.devices.zip.job import COMPRESS_JOB_MAX
from warpdrive.errors import WarpdriveError

WBITS = {"gzip": 31, "zlib": 15, "deflate": -15}
SUFFIX = {"gzip": ".gz", "zlib": ".zz", "deflate": ".deflate"}


def files_under(root: str) -> list[str]:
    out = []
    for d, _, names in os.walk(root):
        for n in sorted(names):
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--out", help="write compressed files here (mirroring the tree)")
    ap.add_argument("--format", choices=list(WBITS), default="gzip")
    ap.add_argument("--device", help="ZIP VF address, uacce name or 'emu' (default: auto)")
    ap.add_argument("--batch", type=int, default=32, help="jobs per doorbell")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error(f"--batch {args.batch}: give 1 or more jobs per doorbell")
    try:
        return run(args)
    except (WarpdriveError, OSError) as e:  # one line, as the `warpdrive` command says it
        print(f"compress_files: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    wbits = WBITS[args.format]
    paths = files_under(args.dir)
    if not paths:
        print(f"no files under {args.dir}", file=sys.stderr)
        return 1

    results: dict[str, bytes] = {}
    with wz.open_engine(args.device) as eng:
        print(f"engine: {eng.name} ({eng.backend})", file=sys.stderr)
        start = time.monotonic()
        session = eng.session("compress", wbits=wbits)
        in_flight = 0
        queued = 0
        originals: dict[str, bytes] = {}
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            originals[path] = data
            if len(data) > COMPRESS_JOB_MAX:  # more than one job: stream mode
                results[path] = wz.compress(data, wbits=wbits, device=eng)
                continue
            session.submit(data, flush=False, user_data=path)
            in_flight += 1
            queued += 1
            if queued == args.batch:  # one doorbell for the batch
                session.flush()
                queued = 0
            for job in session.poll():  # reap whatever finished meanwhile
                results[str(job.user_data)] = job.result()
                in_flight -= 1
        session.flush()
        for job in session.drain():
            results[str(job.user_data)] = job.result()
        session.close()
        secs = time.monotonic() - start

    total_in = total_out = 0
    bad = 0
    for path in paths:
        data, blob = originals[path], results[path]
        ok = zlib.decompress(blob, wbits) == data  # independent decoder
        bad += not ok
        total_in += len(data)
        total_out += len(blob)
        ratio = len(data) / len(blob) if blob else 0.0
        print(f"{'ok ' if ok else 'BAD'} {len(data):>10} -> {len(blob):>10}  {ratio:6.2f}x  "
              f"{os.path.relpath(path, args.dir)}")
        if args.out:
            dst = os.path.join(args.out, os.path.relpath(path, args.dir)) + SUFFIX[args.format]
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            # complete or absent: written under a name of its own (O_EXCL: never someone
            # else's file), then renamed into place
            tmp = f"{dst}.{os.getpid()}.tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
                f.write(blob)
            os.replace(tmp, dst)
    print(f"{len(paths)} files, {total_in} -> {total_out} bytes "
          f"({total_in / max(total_out, 1):.2f}x) in {secs:.2f} s, "
          f"{total_in / max(secs, 1e-9) / 1e6:.1f} MB/s; {bad} failed verification")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
