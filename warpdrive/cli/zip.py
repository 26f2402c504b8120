"""`warpdrive compress|decompress [OPTION]... [FILE]...`: gzip's command line, on a ZIP engine.

gzip users already know it: -c -d -f -k -l -n -N -q -r -S -t -v -1..-9, several files, `-` for
standard input/output, gzip's suffix rules (.gz, -gz, .z, -z, _z; .tgz and .taz give .tar) and
exit codes (0 ok, 1 error, 2 warning: e.g. trailing garbage ignored, a file skipped). Unlike
gzip the input file is KEPT unless --rm is given (help and -v say so). Output files get the
input's mode, owner and times, and appear only when complete (see `output`): a failure, a
signal, a full disk never leave a partial file, and nothing this run did not create is removed.
The header stores the input's name and mtime (-n: neither); -N restores them when
decompressing. With no hardware the bundled device model does the work (a note on stderr that
-q silences). The progress line (bytes, rate, ETA) is drawn only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import IO, Any

from ..errors import WarpdriveError
from ..logs import stderr_handler
from ..record import record
from . import USAGE_EXIT
from .output import Interrupted, Output, OutputExistsError, io_error, signals_raise

EXIT_OK, EXIT_ERROR, EXIT_WARNING = 0, 1, 2
WBITS = {"gzip": 31, "zlib": 15, "deflate": -15}
SUFFIX = {"gzip": ".gz", "zlib": ".zz", "deflate": ".deflate"}
# gzip's decompression suffixes, tried in this order; .tgz/.taz name a .tar.
GZ_SUFFIXES = (".gz", "-gz", ".z", "-z", "_z")
TAR_SUFFIXES = (".tgz", ".taz")
READ_CHUNK = 1 << 20
# Input bytes per gzip member (one engine job each). Every member costs ~1.4 ms of CPU around
# its deflate (the model's thread posts it, this process wakes, writes, reads and submits the
# next): 2 MiB halves that against 1 MiB; pigz's 128 KiB blocks are its threads' own.
MEMBER = 2 << 20
IN_FLIGHT = 4  # compression jobs on the engine at once (its workers run them in parallel)
# Whole-member decompression jobs on the engine at once: a member inflates in a few ms, so more
# of them keep the workers busy while this process waits to be scheduled again (loaded machine).
MEMBERS_IN_FLIGHT = 8
OUT_CHUNK = 4 << 20  # decompressed bytes per call (fewer, larger jobs); memory stays bounded
# Seconds before a progress line appears (short runs stay quiet); WARPDRIVE_PROGRESS_AFTER
# overrides it, e.g. 0 to see the line on a run that finishes within a second.
def _progress_after() -> float:
    try:
        return max(0.0, float(os.environ.get("WARPDRIVE_PROGRESS_AFTER", "1.0")))
    except ValueError:  # a malformed value keeps the default rather than breaking the CLI
        return 1.0


PROGRESS_AFTER = _progress_after()

log = logging.getLogger("warpdrive.cli")


class Warning_(WarpdriveError):
    """A problem gzip reports as a warning (exit 2): the run goes on."""


# -- the parser ------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    for name in ("compress", "decompress"):
        verb = "Compress" if name == "compress" else "Decompress"
        p: argparse.ArgumentParser = subparsers.add_parser(
            name, help=f"{verb.lower()} files like gzip, on a ZIP engine",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{verb} FILEs in place (FILE.gz), or standard input to standard "
            "output, with gzip's options, on a HiSilicon ZIP engine (uacce or vfio-pci; "
            "without hardware, the bundled device model).\n\nUnlike gzip, the input file is "
            "kept unless --rm is given.",
            epilog="The hardware has one compression level: -1..-9, --fast and --best are "
            "accepted for gzip compatibility and only set the header's XFL byte (-0 is not "
            "a gzip option). gzip output is written as members of 2 MiB of input each, "
            "compressed in parallel (gzip -l shows the last member's size); each states its "
            "size in the header (extra field WZ), so they decompress in parallel too.\n"
            "Exit status: 0 ok, 1 error, 2 warning (as gzip).")
        USAGE_EXIT[name] = EXIT_ERROR  # gzip exits 1 on a usage error (2 means a warning)
        p.add_argument("files", metavar="FILE", nargs="*",
                       help="files to process; none or '-' means standard input")
        p.add_argument("-c", "--stdout", "--to-stdout", action="store_true",
                       help="write on standard output, keep original files")
        p.add_argument("-d", "--decompress", "--uncompress", action="store_true",
                       default=name == "decompress", help="decompress")
        p.add_argument("-f", "--force", action="store_true",
                       help="overwrite output files; write compressed data to a terminal; "
                       "with -dc, pass data that is not compressed through unchanged")
        p.add_argument("-k", "--keep", action="store_true",
                       help="keep (don't delete) input files: the default here")
        p.add_argument("--rm", action="store_true",
                       help="delete input files once their output is complete (gzip's "
                       "default)")
        p.add_argument("-l", "--list", action="store_true",
                       help="list compressed file contents")
        p.add_argument("-n", "--no-name", dest="name", action="store_false", default=None,
                       help="compress: store no name and no time stamp; decompress: don't "
                       "restore them (the default)")
        p.add_argument("-N", "--name", dest="name", action="store_true",
                       help="compress: store the name and time stamp (the default); "
                       "decompress: restore them")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="suppress all warnings (and the bundled-model note)")
        p.add_argument("-r", "--recursive", action="store_true",
                       help="operate recursively on directories")
        p.add_argument("-S", "--suffix", metavar="SUF", help="use suffix SUF (default .gz)")
        p.add_argument("-t", "--test", action="store_true",
                       help="test compressed file integrity")
        p.add_argument("-v", "--verbose", action="store_true", help="verbose mode")
        p.add_argument("-V", "--version", action="version",
                       version=f"warpdrive {_version()} ({name}, gzip-compatible)")
        for level in range(1, 10):
            p.add_argument(f"-{level}", dest="level", action="store_const", const=level,
                           help=argparse.SUPPRESS)
        p.add_argument("--fast", dest="level", action="store_const", const=1,
                       help="-1 (see below: one hardware level)")
        p.add_argument("--best", dest="level", action="store_const", const=9,
                       help="-9 (see below: one hardware level)")
        p.add_argument("-o", "--output", metavar="OUT",
                       help="write to OUT instead (one FILE only; '-' = standard output)")
        p.add_argument("--format", choices=["gzip", "zlib", "deflate"], default=None,
                       help="container (default gzip; decompress also reads zlib, detected)")
        p.add_argument("--device", metavar="DEV",
                       help="a ZIP VF's PCI address on vfio-pci, a uacce name (hisi_zip-0), "
                       "or 'emu' (default: the first hardware found, else emu)")
        p.add_argument("--doorbell", choices=["mmap", "message"], default="mmap",
                       help=argparse.SUPPRESS)
        p.add_argument("--progress", action="store_true", default=None,
                       help=argparse.SUPPRESS)  # tests: draw it without a terminal
        p.set_defaults(func=run)


def _version() -> str:
    from .. import __version__

    return __version__


# -- one run ---------------------------------------------------------------------------------
@record
class Result:
    n_in: int = 0
    n_out: int = 0
    warning: str = ""  # e.g. trailing garbage (exit 2, the output is still written)
    mtime: int = 0  # the first gzip member's header time stamp


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.decompress = bool(args.decompress or args.test or args.list)
        self.fmt = args.format or "gzip"
        self.suffix = args.suffix if args.suffix is not None else SUFFIX[self.fmt]
        self.status = EXIT_OK
        self._engine: Any = None
        self._prestarted = False
        self.out: Output | None = None
        self.totals = [0, 0, 0]  # compressed, uncompressed, last header+trailer bytes (-l)

    # -- messages --------------------------------------------------------------------------
    def error(self, msg: str) -> None:
        print(f"warpdrive: {msg}", file=sys.stderr)
        self.status = EXIT_ERROR

    def warn(self, msg: str) -> None:
        if not self.args.quiet:
            print(f"warpdrive: {msg}", file=sys.stderr)
        if self.status == EXIT_OK:
            self.status = EXIT_WARNING

    # -- the engine, opened once for all files ---------------------------------------------
    def engine(self) -> Any:
        if self._engine is None:
            from .. import zip as wz

            self._engine = wz.open_engine(self.args.device, doorbell=self.args.doorbell)
            log.info("warpdrive: engine %s (%s)", self._engine.name, self._engine.backend)
        return self._engine

    def prestart_model(self) -> None:
        """Start the bundled model now when this run will surely use it, so that its boot
        (~150 ms of a fresh interpreter) overlaps ours (the zip engine's imports and the
        hardware scan, about as long) instead of following it. The engine opener adopts it;
        `close` stops it if nothing did."""
        args = self.args
        wanted = not (args.list or args.device or os.environ.get("WARPDRIVE_DEVICE"))
        if wanted:
            from ..backends import nothing_bound

            # (if something is bound, the engine opener's scan decides: hardware first)
            wanted = nothing_bound()
        if wanted:
            from ..backends.vfiouser import launcher

            launcher.prestart("zip")  # (keeps the one `main` started ahead, if any)
            self._prestarted = True
        elif "warpdrive.backends.vfiouser.launcher" in sys.modules:
            from ..backends.vfiouser import launcher

            launcher.drop_prestarted()  # `main`'s early guess was wrong: stop it now

    def close(self) -> None:
        try:
            if self._engine is not None:
                self._engine.close()
        finally:
            if self._prestarted:
                from ..backends.vfiouser import launcher

                launcher.drop_prestarted()

    # -- inputs ----------------------------------------------------------------------------
    def inputs(self) -> Iterator[str]:
        for name in self.args.files or ["-"]:
            if name != "-" and self.args.recursive and os.path.isdir(name):
                for d, dirs, files in os.walk(name):
                    dirs.sort()
                    for f in sorted(files):
                        yield os.path.join(d, f)
            else:
                yield name

    def _says_skip(self) -> bool:
        """gzip reports a skipped name (and exits 2) with -v, or when neither -r nor -q."""
        return bool(self.args.verbose or not (self.args.recursive or self.args.quiet))

    def output_name(self, name: str, warn: bool = True) -> str | None:
        """The default output name, or None (with a warning) when gzip would skip the file."""
        if not self.decompress:
            if name.endswith(self.suffix):
                if warn and self._says_skip():
                    self.warn(f"{name} already has {self.suffix} suffix -- unchanged")
                return None
            return name + self.suffix
        low = name.lower()
        for suf in TAR_SUFFIXES:
            if low.endswith(suf) and len(name) > len(suf):
                return name[:-len(suf)] + ".tar"
        sufs = (self.suffix,) if self.args.suffix else (SUFFIX[self.fmt], *GZ_SUFFIXES) \
            if self.fmt != "gzip" else GZ_SUFFIXES
        for suf in sufs:
            if low.endswith(suf.lower()) and len(name) > len(suf):
                return name[:-len(suf)]
        if warn and self._says_skip():
            self.warn(f"{name}: unknown suffix -- ignored")
        return None

    # -- per file --------------------------------------------------------------------------
    def file(self, name: str) -> None:
        args = self.args
        to_stdout = args.stdout or args.output == "-" or name == "-"
        listing, testing = args.list, args.test
        if name != "-":
            if self.decompress and not os.path.lexists(name):
                # gzip -d NAME finds NAME.gz (or another known suffix)
                for suf in (self.suffix, *GZ_SUFFIXES, *TAR_SUFFIXES):
                    if os.path.lexists(name + suf):
                        name += suf
                        break
            try:
                st = os.stat(name) if args.force else os.lstat(name)
            except OSError as e:
                raise io_error("cannot read", e, name) from None
            if stat.S_ISLNK(st.st_mode):
                raise Warning_(f"{name} is a symbolic link -- ignored", hint="use -f")
            if stat.S_ISDIR(st.st_mode):
                raise Warning_(f"{name} is a directory -- ignored", hint="use -r")
            if not stat.S_ISREG(st.st_mode) and not (to_stdout or args.output or listing
                                                     or testing or args.force):
                raise Warning_(f"{name} is not a directory or a regular file - ignored")
        out_name = None
        if not (to_stdout or listing or testing):
            out_name = args.output or self.output_name(name)
            if out_name is None:
                return
        if name == "-":
            if self.decompress and sys.stdin.isatty() and not args.force:
                raise WarpdriveError("compressed data not read from a terminal",
                                     hint="use -f to force decompression")
            src: IO[bytes] = sys.stdin.buffer
            in_stat = None
        else:
            try:
                src = open(name, "rb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise io_error("cannot read", e, name) from None
            in_stat = os.fstat(src.fileno())
        try:
            if listing:
                self.list(name, src, in_stat)
                return
            if to_stdout and not testing and not self.decompress and sys.stdout.isatty() \
                    and not args.force:
                raise WarpdriveError("compressed data not written to a terminal",
                                     hint="use -f to force compression")
            first = b""
            if self.decompress and args.name and out_name and not args.output:
                # -N: the output takes the name stored in the header (in the input's dir).
                first = _read(src, 64 << 10, name)
                stored = _stored_name(first)
                if stored:
                    out_name = os.path.join(os.path.dirname(name), stored)
            self.convert(name, src, in_stat, out_name, first)
        finally:
            if src is not sys.stdin.buffer:
                src.close()

    def convert(self, name: str, src: IO[bytes], in_stat: os.stat_result | None,
                out_name: str | None, first: bytes = b"") -> None:
        args = self.args
        regular = in_stat is not None and stat.S_ISREG(in_stat.st_mode)
        if args.test:
            self.out = None
        else:
            self.out = Output(out_name or "-", force=args.force,
                              inputs=[in_stat] if in_stat is not None else [])
        out = self.out
        try:
            total = in_stat.st_size if regular and in_stat is not None else None
            verb = "test" if args.test else "decompress" if self.decompress else "compress"
            prog = Progress(f"{verb} {name}", total, args)
            start = time.monotonic()
            if self.decompress:
                res = self.decompress_one(name, src, first, out, prog)
            else:
                res = self.compress_one(name, src, in_stat if regular else None, out, prog)
            prog.done()
            secs = time.monotonic() - start
            if out is not None:
                like: Any = in_stat if regular else None
                if like is not None and self.decompress and args.name and res.mtime:
                    like = _StatLike(like, res.mtime)
                out.commit(like=like)
        except Interrupted as e:
            if out is not None:
                e.note = ("the output was complete" if out.committed else
                          "output incomplete" if out.direct else
                          f"nothing was written under {out.path}") + "; input untouched"
            raise
        finally:
            if out is not None:
                out.discard()
            self.out = None
        if res.warning:
            self.warn(f"{name}: {res.warning}")
        self.totals[0] += res.n_in
        self.totals[1] += res.n_out
        if args.rm and regular and out is not None and not out.direct:
            os.unlink(name)
        if args.verbose:
            self.report(name, res, secs, out_name)

    def report(self, name: str, res: Result, secs: float, out_name: str | None) -> None:
        big, small = (res.n_in, res.n_out) if not self.decompress else (res.n_out, res.n_in)
        pct = (1 - small / big) * 100 if big else 0.0
        mbs = big / max(secs, 1e-9) / 1e6
        if self.args.test:
            what = "OK"
        elif out_name is None or self.args.stdout or out_name == "-":
            what = "written to standard output"
        else:
            what = f"created {out_name}" + ("" if self.args.rm or name == "-"
                                             else f", {name} kept")
        print(f"{name}:\t{pct:5.1f}% -- {what} ({res.n_in} -> {res.n_out} bytes, "
              f"{mbs:.1f} MB/s)", file=sys.stderr)

    # -- compression -----------------------------------------------------------------------
    def compress_one(self, name: str, src: IO[bytes], in_stat: os.stat_result | None,
                     out: Output | None, prog: Progress) -> Result:
        from ..zip import gzip as wgz
        from ..zip import zlib_api as wz

        assert out is not None
        level = self.args.level or 6
        c: Any
        if self.fmt == "gzip":
            keep = self.args.name is not False and name != "-"
            head = wgz._gzip_header(wgz._header_name(name) if keep else b"",
                                    int(in_stat.st_mtime) if keep and in_stat else 0, level)
            return self.compress_members(name, head, level, src, out, prog,
                                         in_stat.st_size if in_stat else None)
        else:
            c = wz.compressobj(level, wz.DEFLATED, WBITS[self.fmt], device=self.engine(),
                               chunk_size=READ_CHUNK)
        res = Result()
        while True:
            block = _read(src, READ_CHUNK, name)
            if not block:
                break
            res.n_in += len(block)
            data = c.compress(block)
            out.write(data)
            res.n_out += len(data)
            prog.update(len(block))
        data = c.flush()
        out.write(data)
        res.n_out += len(data)
        return res

    def compress_members(self, name: str, head: bytes, level: int, src: IO[bytes],
                         out: Output, prog: Progress, size: int | None = None) -> Result:
        """gzip: the input as independent members of MEMBER bytes, IN_FLIGHT of them on
        the engine at once (pigz's parallelism; bgzip's layout, which every gzip reader reads
        as one file). The first member carries the header with the name and time stamp. The
        input is read straight into the jobs' DMA buffers and the output written from them
        (no copies in this process: the engine's workers need the cores). The members' room is
        one DMA buffer taken before the first job, an input and an output slot per member in
        flight (`size`, when known, bounds how many): each buffer costs a map request the model
        answers between jobs and a check of this process's memory map (/proc/self/smaps), so
        there is one, and it is not made while jobs run."""
        from ..devices.zip.job import compress_bound
        from ..zip import gzip as wgz

        s = self.engine().session("compress", wbits=31, level=level)
        res = Result()
        slots = IN_FLIGHT if size is None else max(1, min(IN_FLIGHT, -(-size // MEMBER)))
        room = 10 + compress_bound(MEMBER)  # a member's output: a sized header's room too
        outs = slots * MEMBER  # the output slots follow the input slots
        mem = None
        pending: deque[tuple[Any, int | None]] = deque()  # (job, its slot)
        first = True
        try:
            mem = s.buffer(outs + slots * room)
            free = list(range(slots - 1, -1, -1))
            while True:
                # (fewer than `slots` jobs are pending here: a slot is free)
                slot = free.pop()
                at = slot * MEMBER
                block = _readinto(src, mem.view[at:at + MEMBER], name)
                if block:
                    res.n_in += block
                    job = s.prepare(mem, block, mem, src_offset=at,
                                    dst_offset=outs + slot * room, dst_length=room)
                    pending.append((s.submit(job), slot))
                    prog.update(block)
                else:
                    free.append(slot)
                    if first and not pending:  # an empty input is one empty member
                        pending.append((s.submit(b""), None))
                while pending and (not block or not free or pending[0][0].done):
                    job, used = pending.popleft()
                    while not job.done:
                        s.wait()
                    view = None
                    try:
                        view = job.output  # (raises the job's error)
                        # Each member says its size in its header: a reader can cut the
                        # members apart without inflating them (decompress_sized_members).
                        hdr = wgz.with_size(head if first else bytes(view[:10]), len(view) - 10)
                        out.write(hdr)
                        out.write(view[10:])
                        res.n_out += len(hdr) + len(view) - 10
                    finally:
                        # no view of a DMA buffer may outlive the engine when a signal ends
                        # the run mid-write
                        if view is not None:
                            view.release()
                    first = False
                    if used is not None:
                        free.append(used)
                    job.release()
                if not block:
                    return res
        finally:
            s.close()  # waits for the jobs still in flight
            if mem is not None:
                s.release_buffer(mem)

    # -- decompression ---------------------------------------------------------------------
    def decompress_one(self, name: str, src: Any, first: bytes, out: Output | None,
                       prog: Progress) -> Result:
        """Every member (gzip files may hold several), output in bounded pieces; trailing
        zeros and garbage after a member are warnings, as in gzip."""
        from ..devices.zip.errors import ZipDataError
        from ..zip import zlib_api as wz

        wbits = {"gzip": 31, "zlib": 15, "deflate": -15}[self.fmt] if self.args.format else 47
        res = Result()
        inp = _CountedInput(src, name, res, prog)  # (every byte read is counted there)
        inp.count(len(first))
        buf = first + inp.read(READ_CHUNK)
        if not buf:
            raise WarpdriveError(f"{name}: unexpected end of file")
        if self.args.force and self.args.stdout and not _looks_compressed(buf, self.fmt):
            return self.pass_through(inp, buf, out, res)  # gzip -dcf
        members = 0
        while True:
            if wbits in (31, 47) and buf[:2] == b"\x1f\x8b":
                buf, n = self.decompress_sized_members(inp, buf, out, res, members)
                members += n
                if not buf:
                    return res
                if n and buf[:2] != b"\x1f\x8b":
                    return self.trailing(inp, buf, res)
            d = wz.decompressobj(wbits, device=self.engine())
            # The output as views of the engine's DMA memory, written straight from there
            # while the engine inflates the next piece (see `Decompress.chunks`).
            try:
                with contextlib.closing(d.chunks(inp.readinto, buf, OUT_CHUNK)) as pieces:
                    for data in pieces:
                        if out is not None:
                            out.write(data)
                        res.n_out += len(data)
            except ZipDataError as e:
                raise WarpdriveError(f"{name}: {_gzip_words(str(e), members, self.fmt)}") \
                    from None
            if not d.eof:
                raise WarpdriveError(f"{name}: unexpected end of file")
            if not members and d.gzip_header is not None:
                res.mtime = d.gzip_header.mtime
            members += 1
            rest = d.unused_data or inp.read(READ_CHUNK)
            if not rest:
                return res
            if wbits in (31, 47) and rest[:2] == b"\x1f\x8b":
                buf = rest
                wbits = 31
                continue
            return self.trailing(inp, rest, res)

    def trailing(self, inp: _CountedInput, rest: bytes, res: Result) -> Result:
        """What follows the last member: zero padding (tape blocks) is silently fine, anything
        else a warning, as in gzip; the rest is read (and counted) as gzip does."""
        zeros = not rest.strip(b"\x00")
        while True:
            more = inp.read(READ_CHUNK)
            if not more:
                break
            zeros = zeros and not more.strip(b"\x00")
        if not zeros:
            res.warning = "decompression OK, trailing garbage ignored"
        return res

    def decompress_sized_members(self, src: _CountedInput, buf: bytes, out: Output | None,
                                 res: Result, before: int) -> tuple[bytes, int]:
        """gzip members that state their size (the SIZE_SUBFIELD our compression writes),
        decompressed as whole-member jobs, MEMBERS_IN_FLIGHT at once, their output written in
        order (`warpdrive.zip.gzip.SizedMembers`, GzipFile's loop too). Returns (what follows
        them, how many were done): b"" at the end of the input, else what the stream path
        decompresses or rejects with its own message."""
        from ..zip import gzip as wgz

        inp = wgz.Input(src)
        inp.prepend(buf)
        members = wgz.SizedMembers(self.engine(), MEMBERS_IN_FLIGHT)
        done = 0
        try:
            members.fill(inp)
            while members:
                got = members.output()
                if got is None:  # it and the ones after it go to the stream path
                    members.hand_back(inp)
                    break
                data, mtime = got
                if out is not None:
                    out.write(data)
                res.n_out += len(data)
                if before + done == 0:
                    res.mtime = mtime
                done += 1
                members.fill(inp)
            return inp.front(), done
        finally:
            members.close()

    def pass_through(self, inp: _CountedInput, buf: bytes, out: Output | None,
                     res: Result) -> Result:
        while buf:
            if out is not None:
                out.write(buf)
            res.n_out += len(buf)
            buf = inp.read(READ_CHUNK)
        return res

    # -- listing ---------------------------------------------------------------------------
    def list(self, name: str, src: IO[bytes], in_stat: os.stat_result | None) -> None:
        """gzip -l: sizes from the gzip trailer (modulo 4 GiB, as gzip), else by
        decompressing; -v adds the method, CRC and time stamp."""
        if not getattr(self, "_listed", False):
            self._listed = True
            head = "method  crc     date  time  " if self.args.verbose else ""
            print(f"{head}         compressed        uncompressed  ratio uncompressed_name")
        data_head = _read(src, 64 << 10, name)
        size = in_stat.st_size if in_stat is not None and stat.S_ISREG(in_stat.st_mode) \
            else None
        crc, mtime, overhead = 0, 0, 0
        if self.fmt == "gzip" and data_head[:2] == b"\x1f\x8b" and size and size >= 18:
            src.seek(size - 8)
            crc, usize = struct.unpack("<II", _read(src, 8, name))
            mtime = struct.unpack("<I", data_head[4:8])[0]
            csize = size
            overhead = _gzip_header_length(data_head) + 8  # gzip's ratio counts the body
        else:  # no trailer with the size: decompress and count
            self.out = None
            res = self.decompress_one(name, src, data_head, None,
                                      Progress("", None, self.args))
            csize, usize = res.n_in, res.n_out
        self.totals[0] += csize
        self.totals[1] += usize
        # gzip's totals line subtracts the last file's header+trailer bytes, not their sum
        # (gzip 1.12, do_list keeps the last file's value, so one file's totals ratio is its own)
        self.totals[2] = overhead
        out_name = (self.output_name(name, warn=False) if name != "-" else None) or name
        line = f"{csize:>19} {usize:>19} {_ratio(usize - (csize - overhead), usize)} {out_name}"
        if self.args.verbose:
            stamp = time.strftime("%b %e %H:%M", time.localtime(mtime)) if mtime else \
                "            "
            line = f"defla {crc:08x} {stamp} " + line
        print(line)

    def list_totals(self) -> None:
        c, u, overhead = self.totals
        lead = " " * 28 if self.args.verbose else ""
        print(f"{lead}{c:>19} {u:>19} {_ratio(u - (c - overhead), u)} (totals)")


def _ratio(num: int, den: int) -> str:
    """gzip -l's ratio column (gzip 1.12: printf "%5.1f%%" of 100 * num / den)."""
    return f"{100.0 * num / den if den else 0.0:5.1f}%"


class _StatLike:
    """An input's stat with the modification time from the gzip header (decompress -N)."""

    def __init__(self, st: os.stat_result, mtime: int) -> None:
        self.st_mode, self.st_uid, self.st_gid = st.st_mode, st.st_uid, st.st_gid
        self.st_atime_ns = st.st_atime_ns
        self.st_mtime_ns = mtime * 1_000_000_000


def _gzip_head(first: bytes) -> Any:
    """The gzip header at the start of `first` (a `Header`), or None."""
    from ..devices.zip.errors import ZipDataError
    from ..devices.zip.header import scan_header
    from ..devices.zip.sqe import GZIP, Format

    try:
        return scan_header(first, Format(GZIP, 15)) if first[:2] == b"\x1f\x8b" else None
    except ZipDataError:
        return None


def _gzip_header_length(first: bytes) -> int:
    head = _gzip_head(first)
    return head.length if head is not None else 10


def _stored_name(first: bytes) -> str:
    """The file name in a gzip header (its last path component), or ""."""
    head = _gzip_head(first)
    raw = head.gzip.name if head is not None else None
    name = os.path.basename(os.fsdecode(raw)) if raw else ""
    return "" if name in ("", ".", "..") else name


def _readinto(src: Any, view: memoryview, name: str) -> int:
    """Fill `view` (released on return: a signal's traceback must not keep a view of a DMA
    buffer alive) from `src`; fewer bytes only at the end of the input. Returns how many."""
    got = 0
    with view:
        try:
            while got < len(view):
                k = src.readinto(view[got:])
                if not k:
                    break
                got += k
        except OSError as e:
            raise io_error("cannot read", e, name) from None
    return got


def _read(src: Any, n: int, name: str) -> bytes:
    try:
        return bytes(src.read(n))
    except OSError as e:
        raise io_error("cannot read", e, name) from None


class _CountedInput:
    """`src` read as `_read` and `_readinto` do, every byte counted in the result and the
    progress line (the one reader of a file being decompressed)."""

    def __init__(self, src: Any, name: str, res: Result, prog: Progress) -> None:
        self.src, self.name, self.res, self.prog = src, name, res, prog

    def count(self, n: int) -> None:
        self.res.n_in += n
        self.prog.update(n)

    def read(self, n: int) -> bytes:
        data = _read(self.src, n, self.name)
        self.count(len(data))
        return data

    def readinto(self, view: memoryview) -> int:
        k = _readinto(self.src, view, self.name)
        self.count(k)
        return k


def _looks_compressed(buf: bytes, fmt: str) -> bool:
    if buf[:2] == b"\x1f\x8b":
        return True
    return fmt != "gzip" and len(buf) >= 2 and (buf[0] << 8 | buf[1]) % 31 == 0 and \
        buf[0] & 0x0F == 8


def _gzip_words(zlib_msg: str, members: int, fmt: str) -> str:
    """gzip's words for what went wrong (no zlib jargon)."""
    what = zlib_msg.split(": ", 1)[-1]
    if "header" in what or "unknown compression method" in what or "flags set" in what \
            or "window size" in what:
        return ("trailing garbage after a valid member" if members else
                f"not in {fmt} format")
    if "incorrect data check" in what:
        return "invalid compressed data--crc error"
    if "incorrect length check" in what:
        return "invalid compressed data--length error"
    if "incomplete or truncated" in what:
        return "unexpected end of file"
    return "invalid compressed data--format violated"


class Progress:
    """One line on a terminal: bytes done (of the total), rate and ETA; nothing otherwise.
    Appears after a second, so short runs stay silent."""

    def __init__(self, label: str, total: int | None, args: argparse.Namespace) -> None:
        self.label, self.total = label, total
        self.enabled = not args.quiet and (bool(args.progress) or sys.stderr.isatty())
        self.done_bytes = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(self, n: int) -> None:
        self.done_bytes += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < PROGRESS_AFTER or now - self._last < 0.1:
            return
        self._last = now
        rate = self.done_bytes / max(now - self.start, 1e-9)
        line = f"{self.label}: {_size(self.done_bytes)}"
        if self.total:
            frac = min(self.done_bytes / self.total, 1.0)
            left = (self.total - self.done_bytes) / rate if rate else 0.0
            line += (f" of {_size(self.total)} ({frac * 100:.0f}%), {rate / 1e6:.1f} MB/s, "
                     f"ETA {int(left) // 60}:{int(left) % 60:02d}")
        else:
            line += f", {rate / 1e6:.1f} MB/s"
        sys.stderr.write("\r" + line[:200] + "\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def done(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _logging(args: argparse.Namespace) -> None:
    """The library's loggers ("warpdrive.*") to stderr: warnings (the bundled-model note)
    unless -q, details with -v."""
    root = logging.getLogger("warpdrive")
    if not any(getattr(h, "_warpdrive_cli", False) for h in root.handlers):
        h = stderr_handler("%(message)s")  # (the stderr of each record's time)
        h._warpdrive_cli = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.ERROR if args.quiet else logging.INFO if args.verbose
                  else logging.WARNING)
    root.propagate = False


def run(args: argparse.Namespace) -> int:
    _logging(args)
    if args.output and len(args.files) > 1:
        raise WarpdriveError("-o names one output; it takes one FILE",
                             hint="use -c to concatenate several into standard output")
    r = Run(args)
    try:
        with signals_raise(lambda: r.out.discard() if r.out is not None else None):
            r.prestart_model()
            for name in r.inputs():
                try:
                    r.file(name)
                except (Warning_, OutputExistsError) as w:
                    r.warn(str(w))
                except WarpdriveError as e:
                    r.error(str(e))
            if args.list and len(args.files) > 1:
                r.list_totals()
    finally:
        r.close()
    return r.status
