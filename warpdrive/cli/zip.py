"""`warpdrive compress|decompress IN [-o OUT]`: files through a ZIP engine (or the bundled model).

Output is a standard .gz / zlib / raw deflate file (`gzip -d` reads ours; we read gzip's,
multi-member files included). A progress bar goes to stderr for large inputs when stderr is a
terminal (or with --progress), and a summary line at the end (bytes, ratio, MB/s, device).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .output import Interrupted, Output, io_error, signals_raise

SUFFIX = {"gzip": ".gz", "zlib": ".zz", "deflate": ".deflate"}
WBITS = {"gzip": 31, "zlib": 15, "deflate": -15}
READ_CHUNK = 4 << 20
PROGRESS_MIN = 8 << 20  # inputs smaller than this get no bar


def register(subparsers: Any) -> None:
    for name, helptext in (("compress", "compress a file on a ZIP engine"),
                           ("decompress", "decompress a file on a ZIP engine")):
        p: argparse.ArgumentParser = subparsers.add_parser(
            name, help=helptext,
            description=f"{helptext.capitalize()} (HiSilicon ZIP through VFIO or uacce; without "
            "hardware, the bundled device model). IN may be '-' for stdin.")
        p.add_argument("input", metavar="IN")
        p.add_argument("-o", "--output", metavar="OUT",
                       help="output file ('-' for stdout); default: IN with the format's suffix "
                       "added (compress) or removed (decompress)")
        choices = ["gzip", "zlib", "deflate"] + (["auto"] if name == "decompress" else [])
        p.add_argument("--format", choices=choices, default=None,
                       help="container (default: gzip; decompress: from the suffix, else auto "
                       "= gzip or zlib by magic)")
        p.add_argument("--device", metavar="DEV",
                       help="PCI address of a ZIP VF on vfio-pci, a uacce name (hisi_zip-0), or "
                       "'emu' (default: the first hardware found, else emu)")
        p.add_argument("--doorbell", choices=["mmap", "message"], default="mmap",
                       help=argparse.SUPPRESS)
        if name == "compress":
            p.add_argument("-l", "--level", type=int, default=-1,
                           help="zlib level for the headers (the engine has one level)")
        p.add_argument("-f", "--force", action="store_true", help="overwrite OUT")
        p.add_argument("--progress", action="store_true", default=None,
                       help="show a progress bar even when stderr is not a terminal")
        p.add_argument("--no-progress", dest="progress", action="store_false")
        p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
        p.set_defaults(func=run_compress if name == "compress" else run_decompress)


def _default_output(args: argparse.Namespace, compress: bool, fmt: str) -> str:
    if args.input == "-":
        return "-"
    if compress:
        return args.input + SUFFIX[fmt]
    for suffix in (SUFFIX.get(fmt, ""), ".gz", ".zz", ".deflate", ".z"):
        if suffix and args.input.endswith(suffix) and len(args.input) > len(suffix):
            return args.input[:-len(suffix)]
    return args.input + ".out"


def _format_for(args: argparse.Namespace, compress: bool) -> str:
    if args.format:
        return str(args.format)
    if compress:
        return "gzip"
    name = args.input
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zz"):
        return "zlib"
    if name.endswith(".deflate"):
        return "deflate"
    return "auto"


class _Progress:
    def __init__(self, total: int | None, enabled: bool, label: str) -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        rate = self.done / max(now - self.start, 1e-9) / 1e6
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            line = f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% {rate:7.1f} MB/s"
        else:
            line = f"\r{self.label} {self.done / 1e6:9.1f} MB {rate:7.1f} MB/s"
        sys.stderr.write(line)
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


class _Input:
    """Reads that fail with a one-line error naming the input."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        self.file, self.name = file, name

    def read(self, n: int) -> bytes:
        try:
            return self.file.read(n)
        except OSError as e:
            raise io_error("cannot read", e, self.name) from None


def _open_input(args: argparse.Namespace) -> tuple[IO[bytes], os.stat_result | None]:
    """The input and, for a file, its stat (for the same-file check and the output's mode)."""
    if args.input == "-":
        return sys.stdin.buffer, None
    try:
        src = open(args.input, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise io_error("cannot read", e, args.input) from None
    return src, os.fstat(src.fileno())


def _summary(verb: str, n_in: int, n_out: int, secs: float, engine: Any) -> str:
    ratio = (n_in / n_out if n_out else 0.0) if verb == "compressed" else \
        (n_out / n_in if n_in else 0.0)
    mbs = (n_in if verb == "compressed" else n_out) / max(secs, 1e-9) / 1e6
    src = engine.source
    dev = f"{engine.name} ({engine.backend}"
    if getattr(src, "doorbell_mode", None):
        dev += f", {src.doorbell_mode} doorbell"
    dev += ")"
    return (f"{verb} {n_in} -> {n_out} bytes (ratio {ratio:.2f}) in {secs:.2f} s, "
            f"{mbs:.1f} MB/s on {dev}")


def _engine(args: argparse.Namespace) -> Any:
    from .. import zip as wz

    return wz.open(args.device, doorbell=args.doorbell, announce=not args.quiet)


def _progress_enabled(args: argparse.Namespace, total: int | None) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty() and (total is None or total >= PROGRESS_MIN)


def _run_job(args: argparse.Namespace, compress: bool, fmt: str,
             body: Callable[[Any, Output, Any, _Progress], tuple[int, int]]) -> int:
    """Open input, output and an engine, run `body(src, out, engine, progress) -> (in, out)`,
    print the summary. The output becomes visible only when complete (see `output`); on any
    failure or signal nothing is left under its name and the input is untouched."""
    verb = "compress" if compress else "decompress"
    out_path = args.output or _default_output(args, compress, fmt)
    src, in_stat = _open_input(args)
    out: Output | None = None
    try:
        with signals_raise(lambda: out.discard() if out is not None else None):
            try:
                out = Output(out_path, force=args.force,
                             inputs=[in_stat] if in_stat is not None else [])
                eng = _engine(args)
                try:
                    start = time.monotonic()
                    total = in_stat.st_size if in_stat is not None and \
                        stat.S_ISREG(in_stat.st_mode) else None
                    prog = _Progress(total, _progress_enabled(args, total), verb)
                    n_in, n_out = body(_Input(src, args.input), out, eng, prog)
                    prog.finish()
                    regular = in_stat is not None and stat.S_ISREG(in_stat.st_mode)
                    out.commit(like=in_stat if regular else None)
                    secs = time.monotonic() - start
                finally:
                    eng.close()
            except Interrupted as e:
                if out is not None:
                    e.note = ("the output was complete" if out.committed else
                              "output incomplete" if out.direct else
                              f"nothing was written under {out_path}") + "; input untouched"
                    out.discard()
                raise
    finally:
        if out is not None:
            out.discard()
        if src is not sys.stdin.buffer:
            src.close()
    if not args.quiet:
        print(_summary(verb + "ed", n_in, n_out, secs, eng), file=sys.stderr)
    return 0


def run_compress(args: argparse.Namespace) -> int:
    from .. import zip as wz

    fmt = _format_for(args, compress=True)

    def body(src: Any, dst: Output, eng: Any, prog: _Progress) -> tuple[int, int]:
        c = wz.compressobj(args.level, wz.DEFLATED, WBITS[fmt], device=eng,
                           chunk_size=READ_CHUNK)
        n_in = n_out = 0
        while True:
            block = src.read(READ_CHUNK)
            if not block:
                break
            n_in += len(block)
            out = c.compress(block)
            dst.write(out)
            n_out += len(out)
            prog.update(len(block))
        out = c.flush()
        dst.write(out)
        return n_in, n_out + len(out)

    return _run_job(args, True, fmt, body)


def run_decompress(args: argparse.Namespace) -> int:
    from .. import zip as wz

    fmt = _format_for(args, compress=False)
    wbits = {"auto": 47, **WBITS}[fmt]

    def body(src: Any, dst: Output, eng: Any, prog: _Progress) -> tuple[int, int]:
        n_in = n_out = 0
        d = wz.decompressobj(wbits, device=eng)
        fed = False  # this member's decoder has seen input
        buf = b""
        while True:
            if not buf:
                buf = src.read(READ_CHUNK)
                if not buf:
                    break
                n_in += len(buf)
                prog.update(len(buf))
            out = d.decompress(buf)
            fed, buf = True, b""
            dst.write(out)
            n_out += len(out)
            if not d.eof:
                continue
            # End of a member. gzip files may hold more members; anything else ends here.
            rest = d.unused_data
            gzip_member = _container(d) == "gzip"
            if not rest:
                rest = src.read(READ_CHUNK)
                n_in += len(rest)
                prog.update(len(rest))
            if not rest:
                break
            if not gzip_member or rest[:2] != b"\x1f\x8b":
                zeros = not rest.strip(b"\x00")
                while zeros:
                    more = src.read(READ_CHUNK)
                    if not more:
                        break
                    n_in += len(more)
                    zeros = not more.strip(b"\x00")
                what = "trailing zero bytes" if zeros else "trailing garbage"
                print(f"warpdrive: {args.input}: decompression OK, {what} ignored",
                      file=sys.stderr)
                break
            d = wz.decompressobj(wbits, device=eng)
            fed, buf = False, rest
        if not d.eof and (fed or n_in == 0):
            raise wz.ZipDataError(
                f"{args.input}: unexpected end of file (the compressed stream is truncated)")
        return n_in, n_out

    return _run_job(args, False, fmt, body)


def _container(d: Any) -> str:
    """The container a decoder found (auto-detection resolves to gzip or zlib)."""
    return str(d._i.fmt.container)
