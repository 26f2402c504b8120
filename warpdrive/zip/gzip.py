"""gzip files on a ZIP engine, shaped like Python's `gzip` module.

    import warpdrive.zip as wz
    with wz.open("notes.txt.gz", "wt", encoding="utf-8") as f:     # text through TextIOWrapper
        f.write("hello\\n")
    with wz.open("notes.txt.gz") as f:                              # binary: read, readline,
        for line in f: ...                                          # iterate, peek, seek
    tarfile.open(fileobj=wz.open("x.tar.gz", "rb"), mode="r:")      # what tarfile needs

`import warpdrive.zip.gzip as gzip` is a drop-in for the module: `open`, `GzipFile`,
`compress`, `decompress`, `BadGzipFile`, `READ`, `WRITE`. The engine does the deflate body and
the CRC-32 and length; this module reads and writes the headers (name, mtime) and the members.

Reading is bounded: each read decompresses at most a buffer's worth beyond what was asked, so
a small file that expands to gigabytes costs no more memory than a large one. Seeking forward
reads and discards; seeking backward rewinds to the start (a seekable file) and reads again.
Writing seeks only forward (zeros are written). Errors: `BadGzipFile` (an OSError) for what is
not gzip or fails its CRC/length check, `EOFError` for a truncated file, `zlib.error` (a
`ZipDataError`) for a corrupt deflate body, as the `gzip` module raises them.

Fork: a reader inherited by a forked child goes on from a member boundary on the engine the
child gets (`device=None`: the default engine, opened anew there), whatever members the parent
had queued; on an engine the caller gave, or inside a member, the child's read raises
ForkedContextError (the parent's engine is not usable there). An engine closed while a reader is
inside a member (the reader holds a piece of its memory) closes all the same: the reader's later
reads raise ClosedError.
"""

from __future__ import annotations

import builtins
import io
import os
import struct
import time
import warnings
import zlib as _zlib
from collections import deque
from collections.abc import Generator
from typing import IO, Any

from ..devices.zip.errors import ZipDataError
from ..devices.zip.header import Header, scan_header
from ..devices.zip.job import DECOMPRESS_JOB_MAX, decompress_guess
from ..devices.zip.sqe import GZIP, Format
from ..errors import InvalidArgumentError
from . import zlib_api as _z
from .engines import engine_for
from .zlib_api import Where

__all__ = ["READ", "WRITE", "BadGzipFile", "GzipFile", "compress", "decompress", "open"]

READ, WRITE = "rb", "wb"
READ_BUFFER_SIZE = 128 << 10  # compressed bytes read from the file at a time
# Members that state their size decompressing on the engine at once while one is read (a
# device's engines, or the model's workers, run them in parallel; each member's output is at
# most the engine's 8 MiB job limit, so memory stays bounded).
MEMBERS_AHEAD = 4
_MEMBER = Format(GZIP, 15)
_EOF_MSG = "Compressed file ended before the end-of-stream marker was reached"


class BadGzipFile(OSError):
    """The data is not gzip, or a member fails its CRC-32 or length check."""


# The FEXTRA subfield (RFC 1952 2.3.1.1) in which the CLI's members say how many bytes follow
# their header (deflate body and trailer), as bgzip's "BC" subfield does: a reader can then cut
# the members apart without inflating them, and decompress several at once.
SIZE_SUBFIELD = b"WZ"
_SIZE_EXTRA = struct.Struct("<H2sHL")  # XLEN, SI1 SI2, LEN, the size


def _gzip_header(name: bytes, mtime: int, level: int) -> bytes:
    """A member header: FNAME when there is a name, XFL from the level, OS unknown (255)."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return (b"\x1f\x8b\x08" + bytes([0x08 if name else 0]) + struct.pack("<L", mtime & 0xFFFFFFFF)
            + bytes([xfl, 255]) + (name + b"\x00" if name else b""))


def with_size(head: bytes, rest: int) -> bytes:
    """A member header without an extra field, given one holding SIZE_SUBFIELD: `rest` bytes
    of the member follow the header."""
    return (head[:3] + bytes([head[3] | 0x04]) + head[4:10]
            + _SIZE_EXTRA.pack(8, SIZE_SUBFIELD, 4, rest) + head[10:])


def member_rest(extra: bytes | None) -> int | None:
    """The size a member's header extra field states in SIZE_SUBFIELD (None: it states none)."""
    pos = 0
    while extra is not None and pos + 4 <= len(extra):
        size = extra[pos + 2] | extra[pos + 3] << 8
        if extra[pos:pos + 2] == SIZE_SUBFIELD and size == 4 and pos + 8 <= len(extra):
            return int.from_bytes(extra[pos + 4:pos + 8], "little")
        pos += 4 + size
    return None


def sized_member_length(head: Header | None) -> int | None:
    """The whole length of the member `head` begins, when its header states its size
    (SIZE_SUBFIELD) and the member fits one engine job: such members are read whole and
    decompressed as jobs (here and by the CLI). None: any other member (the stream path), or
    no header."""
    if head is None or head.gzip is None:
        return None
    rest = member_rest(head.gzip.extra)
    if rest is None or not 8 <= rest <= DECOMPRESS_JOB_MAX:
        return None
    return head.length + rest


# The memory the sized members in flight may claim together (sized_member_claim), here and in
# the CLI: the format lets a member claim 8 MiB in and 8 MiB out (its trailer says how much
# output room its job gets), so a file of such members, honest or not, would otherwise hold
# ~24 MiB per member in flight (~200 MB at 8). Our own members (2 MiB of input) claim 3-6 MiB
# and all go at once; larger claims wait for the members before them (one always goes).
SIZED_BUDGET = 40 << 20


def sized_member_claim(member: bytes) -> int:
    """The memory a whole sized member in flight holds: its bytes, their copy in DMA memory and
    the output room its job is given (from the trailer's ISIZE, as the session sizes it)."""
    return 2 * len(member) + decompress_guess(member, _MEMBER)


def sized_claims_fit(members: Any, member: bytes) -> bool:
    """Whether `member` may join the sized `members` in flight within SIZED_BUDGET (always
    when none are in flight, so a member is never refused, only made to wait)."""
    held = sum(sized_member_claim(m) for m in members)
    return not held or held + sized_member_claim(member) <= SIZED_BUDGET


class SizedMembers:
    """Members that state their size (SIZE_SUBFIELD), cut from an `Input` without inflating
    them and decompressed on an engine as whole-member jobs, up to `limit` at once and within
    SIZED_BUDGET, their outputs taken in order: GzipFile's reader and the CLI's decompression
    (a device's engines, or the model's workers, decompress them in parallel). Anything odd (a
    member without a size, cut short, not gzip; a job that failed or did not consume exactly
    its member) goes back to the input for the stream path, which reads it or says why (a
    wrong size costs time, never a wrong byte: each job checks its member's CRC-32 and length).
    """

    def __init__(self, device: Where, limit: int) -> None:
        self._device = device
        self.limit = limit
        self._pending: deque[tuple[Any, bytes, int]] = deque()  # (job, member, header mtime)
        self._session: Any = None

    def __len__(self) -> int:
        return len(self._pending)

    def take(self, inp: Input) -> bool:
        """If the next member of `inp` states its size and its claim fits with the members in
        flight, read it whole and submit it; else push back what was read and say False (a
        member that does not fit waits for the ones before it: one always goes)."""
        got = b""
        head: Header | None = None
        try:
            while head is None:
                more = inp.read(64)
                got += more
                if (len(got) >= 2 and got[:2] != b"\x1f\x8b") or not more:
                    return False
                head = scan_header(got, _MEMBER)
        except ZipDataError:
            return False
        finally:
            if head is None:
                inp.prepend(got)
        need = sized_member_length(head)
        while need is not None and len(got) < need:
            more = inp.read(need - len(got))
            if not more:
                break
            got += more
        if need is None or len(got) < need or \
                not sized_claims_fit((m for _, m, _ in self._pending), got[:need]):
            inp.prepend(got)
            return False
        assert head.gzip is not None  # (it states a size)
        member = got[:need]
        inp.prepend(got[need:])
        if self._session is None:
            self._session = engine_for(self._device).session("decompress", wbits=31)
        self._pending.append((self._session.submit(member), member, head.gzip.mtime))
        return True

    def fill(self, inp: Input) -> None:
        while len(self._pending) < self.limit and self.take(inp):
            pass

    def output(self) -> tuple[bytes, int] | None:
        """The oldest member's output (a copy: no view of DMA memory outlives this) and its
        header's mtime, once its job is done; None when the job failed or did not consume
        exactly the member (it stays pending: `hand_back`)."""
        job, _, mtime = self._pending[0]
        while not job.done:
            self._session.wait()
        if job.error is not None or job.consumed != job.src_len:
            return None
        self._pending.popleft()
        data = bytes(job.output)
        job.release()
        return data, mtime

    def hand_back(self, inp: Input) -> None:
        """Give the pending members back to `inp`, in order (their jobs waited for)."""
        pending, self._pending = self._pending, deque()
        inp.prepend(b"".join(m for _, m, _ in pending))
        for job, _, _ in pending:
            while not job.done:
                self._session.wait()
            job.release()

    def forget_forked(self, inp: Input) -> None:
        """In a forked child, the members queued on the parent's engine (jobs that never
        complete here, on buffers not mapped here) go back to `inp` unread, and their session
        with them: the next member goes to the engine `engine_for` gives the child (the
        default engine opens anew; an engine the caller gave refuses with
        ForkedContextError, the fork rule for a parent's engine)."""
        s = self._session
        if s is None or not s.engine._forked_dead:
            return
        pending, self._pending = self._pending, deque()
        inp.prepend(b"".join(m for _, m, _ in pending))
        self._session = None

    def close(self) -> None:
        """No waiting (a reader closes in a finalizer too): a job still in flight keeps its
        buffers, and its session stays with the engine, which settles both when it closes."""
        pending, self._pending = self._pending, deque()
        for job, _, _ in pending:
            if job.done:
                job.release()
        s, self._session = self._session, None
        if s is not None and all(job.done for job, _, _ in pending):
            s.close()


class _Member:
    """A gzip compressor (engine or CPU, see zlib_api) whose first 10 bytes of output, the
    default header every gzip stream starts with, are replaced by our own header."""

    def __init__(self, head: bytes, level: int, device: Where) -> None:
        self._c = _z.compressobj(level, _z.DEFLATED, 31, device=device)
        self._head = head
        self._skip = 10

    def _swap(self, out: bytes) -> bytes:
        if self._skip:
            cut = min(self._skip, len(out))
            self._skip -= cut
            out = out[cut:]
            if not self._skip:
                out, self._head = self._head + out, b""
        return out

    def compress(self, data: memoryview) -> bytes:
        return self._swap(self._c.compress(data))

    def flush(self, mode: int = _zlib.Z_FINISH) -> bytes:
        return self._swap(self._c.flush(mode))


def _header_name(filename: str | bytes) -> bytes:
    fname = os.path.basename(filename)
    if not isinstance(fname, bytes):
        try:
            fname = fname.encode("latin-1")
        except UnicodeEncodeError:
            return b""  # RFC 1952: the name is ISO 8859-1; otherwise none is stored
    return fname[:-3] if fname.endswith(b".gz") else fname


class Input:
    """The compressed input, with bytes pushed back in front (what a member did not use).
    `file` needs only `read(n)` (and `seek` for `rewind`)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self._front = b""
        self._at = 0  # what was read of the front (not sliced off: no copy of the rest)

    def read(self, n: int) -> bytes:
        at = self._at
        if at < len(self._front):
            out = self._front[at:at + n]
            self._at = at + len(out)
            return out
        return bytes(self.file.read(n))

    def prepend(self, data: bytes = b"") -> None:
        if data:  # (nothing to push back: the rest stays where it is, uncopied)
            self._front, self._at = bytes(data) + self._front[self._at:], 0

    def front(self) -> bytes:
        """Take what was pushed back and not read again."""
        out, self._front, self._at = self._front[self._at:], b"", 0
        return out

    def rewind(self) -> None:
        self._front, self._at = b"", 0
        self.file.seek(0)

    def seekable(self) -> bool:
        return bool(self.file.seekable())


def _piece_gone(engine: Any, piece: memoryview, at: int) -> None:
    """A piece of a member's output whose engine is closed or was inherited through fork: with
    bytes left to read from `at`, the engine's error (ForkedContextError in a child, as for the
    rest of the member; ClosedError after its close, which released the view: even its length
    is gone then). A child read up to the piece's end goes on (the member's next piece, or the
    next member on the engine the child gets)."""
    try:
        left = at < len(piece)
    except ValueError:  # (released)
        left = True
    if left:
        engine.check_open()


class _Reader(io.RawIOBase):
    """The decompressed bytes of every member of a gzip file, in order."""

    def __init__(self, file: IO[bytes], device: Where) -> None:
        self._fp = Input(file)
        self._device = device
        self._d: _z.Decompress | None = None
        self._new_member = True
        self._first = True
        self._pos = 0
        self._size = -1
        self._eof = False
        self.mtime: int | None = None  # of the last member header read
        self._sized = SizedMembers(device, MEMBERS_AHEAD)
        # Output not yet returned, from _spill_at on: a sized member's, or a view of the
        # engine's memory holding the piece of a member being read (`_pieces`).
        self._spill: bytes | memoryview = b""
        self._spill_at = 0
        # The member being read, as pieces of output (`Decompress.chunks`): the engine
        # decompresses the next piece while this one is read.
        self._pieces: Generator[memoryview, None, None] | None = None
        self._pieces_engine: Any = None  # the engine whose memory they are in

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fp.seekable()

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        with memoryview(b) as view, view.cast("B") as out, self._take(len(out)) as data:
            n = len(data)
            out[:n] = data  # (the one copy: from the engine's memory into the caller's)
        return n

    def readall(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            data = self.read(1 << 20)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def _start_member(self) -> bool:
        """Read the next member's header (after skipping zero padding); False at the end."""
        got = b""
        if not self._first:  # members may be followed by zeros (tape padding)
            while not got:
                chunk = self._fp.read(1 << 12)
                if not chunk:
                    return False
                got = chunk.lstrip(b"\x00")
        head: Header | None = None
        while head is None:
            if len(got) >= 2 and got[:2] != b"\x1f\x8b":
                raise BadGzipFile(f"Not a gzipped file ({got[:2]!r})")
            try:
                head = scan_header(got, _MEMBER)
            except ZipDataError as e:
                raise BadGzipFile(str(e).split(": ", 1)[-1].capitalize()) from None
            if head is None:
                more = self._fp.read(64)
                if not more:
                    if not got and self._first:
                        return False  # an empty file holds no members
                    raise EOFError(_EOF_MSG)
                got += more
        self._first = False
        assert head.gzip is not None
        self.mtime = head.gzip.mtime
        self._fp.prepend(got)  # the decompressor reads the header again (it is small)
        self._d = _z.decompressobj(31, device=self._device)
        return True

    def _sized_output(self) -> bool:
        """The oldest queued sized member's output into the spill; False when it failed (its
        bytes and the later ones are back in the input for the stream path, which says why)."""
        got = self._sized.output()
        if got is None:
            self._sized.hand_back(self._fp)
            return False
        self._spill, self.mtime = got
        self._spill_at = 0
        self._first = False
        self._sized.fill(self._fp)  # the next ones decompress while this one is read
        return True

    def close(self) -> None:
        try:  # (no waiting: close runs in a finalizer too; see SizedMembers.close)
            self._drop_pieces()
            self._sized.forget_forked(self._fp)
            self._sized.close()
        finally:
            super().close()

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return self.readall()
        with self._take(size) as data:
            return bytes(data)

    def _take(self, size: int) -> memoryview:
        """The next at most `size` bytes of output, a view of the piece being read (no copy):
        the caller copies it and releases it before reading on."""
        if not size or self._eof:
            return memoryview(b"")
        while True:
            spill = self._spill
            if spill.__class__ is memoryview:
                # A piece of the engine's memory: not mapped in a forked child (MADV_DONTFORK:
                # reading it was a segfault), taken back by the engine's close (`_closed` is
                # set in both cases): see `_piece_gone`.
                engine = self._pieces_engine
                if engine is not None and engine._closed:
                    _piece_gone(engine, spill, self._spill_at)
            else:
                spill = memoryview(spill)
            at = self._spill_at
            if at < len(spill):
                out = spill[at:at + size]
                self._spill_at = at + len(out)
                break
            if self._new_member:
                sized = self._sized
                sized.forget_forked(self._fp)
                if not sized:
                    sized.fill(self._fp)
                if sized and self._sized_output():
                    continue
            if self._new_member:
                if not self._start_member():
                    self._eof = True
                    self._size = self._pos
                    return memoryview(b"")
                self._new_member = False
            d = self._d
            assert d is not None
            if self._pieces is None:
                self._pieces = d.chunks(self._read_input, b"", READ_BUFFER_SIZE)
                # (None: pieces the CPU makes, in ordinary memory)
                self._pieces_engine = getattr(d._b, "engine", None)
            self._spill, self._spill_at = b"", 0  # (the last piece's view goes now)
            try:
                piece = next(self._pieces, None)
            except ZipDataError as e:
                self._pieces = None
                msg = str(e)
                if "incorrect data check" in msg:
                    raise BadGzipFile("CRC check failed") from None
                if "incorrect length check" in msg:
                    raise BadGzipFile("Incorrect length of data produced") from None
                raise
            except BaseException:  # (it ended there: a read again hears why from the stream)
                self._pieces = None
                raise
            if piece is not None:
                # (read from the engine's memory: the view is valid until the next piece)
                self._spill, self._spill_at = piece, 0
                continue
            self._pieces = None
            if not d.eof:
                raise EOFError(_EOF_MSG)
            self._fp.prepend(d.unused_data)
            self._new_member = True
        self._pos += len(out)
        return out

    def _read_input(self, view: memoryview) -> int:
        """The member's compressed bytes for `Decompress.chunks`."""
        data = self._fp.read(min(len(view), READ_BUFFER_SIZE))
        view[:len(data)] = data
        return len(data)

    def _drop_pieces(self) -> None:
        """Let the member's decompression go (rewind, close): its buffers go back."""
        pieces, self._pieces = self._pieces, None
        if pieces is not None:
            if isinstance(self._spill, memoryview):
                self._spill, self._spill_at = b"", 0  # (a view of the piece)
            pieces.close()

    def _rewind(self) -> None:
        self._drop_pieces()
        self._sized.forget_forked(self._fp)
        self._sized.hand_back(self._fp)
        self._spill, self._spill_at = b"", 0
        self._fp.rewind()
        self._d = None
        self._new_member = self._first = True
        self._pos = 0
        self._eof = False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            if self._size < 0:
                while self.read(1 << 20):
                    pass
            offset += self._size
        elif whence != io.SEEK_SET:
            raise InvalidArgumentError(f"Invalid value for whence: {whence}")
        if offset < self._pos:
            self._rewind()
        while self._pos < offset:
            if not self.read(min(1 << 20, offset - self._pos)):
                break
        return self._pos


class GzipFile(io.BufferedIOBase):
    """A gzip file, as `gzip.GzipFile`: `filename` or `fileobj`, mode r/w/a/x (binary),
    `compresslevel` (headers only on the engine, which has one level; 0 stores), `mtime`
    for the header. Extra: `device=` picks the engine (see `warpdrive.zip`)."""

    myfileobj: IO[bytes] | None = None

    def __init__(self, filename: str | bytes | os.PathLike[Any] | None = None,
                 mode: str | None = None, compresslevel: int = 9,
                 fileobj: IO[bytes] | None = None, mtime: float | None = None, *,
                 device: Where = None) -> None:
        if mode and ("t" in mode or "U" in mode):
            raise InvalidArgumentError(f"Invalid mode: {mode!r}")
        if mode and "b" not in mode:
            mode += "b"
        if fileobj is None:
            if filename is None:
                raise TypeError("GzipFile needs a filename or a fileobj")
            fileobj = self.myfileobj = builtins.open(filename, mode or "rb")  # noqa: SIM115
        if filename is None:
            filename = getattr(fileobj, "name", "")
            if not isinstance(filename, str | bytes):
                filename = ""
        else:
            filename = os.fspath(filename)
        origmode = mode
        if mode is None:
            mode = getattr(fileobj, "mode", "rb")
        self._device = device
        self.fileobj: IO[bytes] | None = fileobj
        self.name = filename if isinstance(filename, str) else os.fsdecode(filename)
        if mode.startswith("r"):
            self.mode = READ
            self._raw = _Reader(fileobj, device)
            self._buffer: io.BufferedReader | None = io.BufferedReader(self._raw)
        elif mode.startswith(("w", "a", "x")):
            if origmode is None:
                warnings.warn("GzipFile was opened for writing, but this will change in "
                              "future Python releases.  Specify the mode argument for "
                              "opening it for writing.", FutureWarning, 2)
            self.mode = WRITE
            self._buffer = None
            level = _z.c_int(compresslevel)
            if not 0 <= level <= 9:
                raise InvalidArgumentError(f"compresslevel must be 0..9, not {level}")
            stamp = int(time.time() if mtime is None else mtime)
            self._member = _Member(_gzip_header(_header_name(filename), stamp, level), level,
                                   device)
            self.offset = 0  # uncompressed bytes written
        else:
            raise InvalidArgumentError(f"Invalid mode: {mode!r}")

    # -- state -----------------------------------------------------------------------------
    @property
    def mtime(self) -> int | None:
        """The mtime of the last member header read (None before reading)."""
        return self._raw.mtime if self.mode == READ else None

    @property
    def closed(self) -> bool:
        return self.fileobj is None

    def _check_not_closed(self) -> None:
        if self.fileobj is None:
            raise InvalidArgumentError("I/O operation on closed file.")

    def _reader(self) -> io.BufferedReader:
        self._check_not_closed()
        if self.mode != READ or self._buffer is None:
            raise OSError(9, "read() on write-only GzipFile object")
        return self._buffer

    def readable(self) -> bool:
        return self.mode == READ

    def writable(self) -> bool:
        return self.mode == WRITE

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        self._check_not_closed()
        assert self.fileobj is not None
        return self.fileobj.fileno()

    def __repr__(self) -> str:
        return f"<warpdrive.zip.GzipFile {self.name!r} {id(self):#x}>"

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: Any) -> int:
        self._check_not_closed()
        if self.mode != WRITE:
            raise OSError(9, "write() on read-only GzipFile object")
        mv = _z.byte_view(data)
        if mv.nbytes:
            assert self.fileobj is not None
            self.fileobj.write(self._member.compress(mv))
            self.offset += mv.nbytes
        return mv.nbytes

    def flush(self, zlib_mode: int = _zlib.Z_SYNC_FLUSH) -> None:
        self._check_not_closed()
        if self.mode == WRITE:
            assert self.fileobj is not None
            self.fileobj.write(self._member.flush(zlib_mode))
            self.fileobj.flush()

    def close(self) -> None:
        fileobj = self.fileobj
        if fileobj is None:
            return
        try:
            if self.mode == WRITE:
                fileobj.write(self._member.flush())
            elif self._buffer is not None:
                self._buffer.close()
        finally:
            self.fileobj = None
            my, self.myfileobj = self.myfileobj, None
            if my is not None:
                my.close()

    # -- reading ---------------------------------------------------------------------------
    def read(self, size: int | None = -1) -> bytes:
        return self._reader().read(size)

    def read1(self, size: int = -1) -> bytes:
        r = self._reader()
        return r.read1(size if size >= 0 else io.DEFAULT_BUFFER_SIZE)

    def readinto(self, b: Any) -> int:
        return self._reader().readinto(b)

    def readinto1(self, b: Any) -> int:
        return self._reader().readinto1(b)

    def peek(self, n: int = 0) -> bytes:
        return self._reader().peek(n)

    def readline(self, size: int | None = -1) -> bytes:
        return self._reader().readline(size)

    def rewind(self) -> None:
        """Go back to the start of the file (read mode)."""
        self._reader().seek(0)

    def tell(self) -> int:
        self._check_not_closed()
        return self.offset if self.mode == WRITE else self._reader().tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.mode == WRITE:
            self._check_not_closed()
            if whence == io.SEEK_CUR:
                offset += self.offset
            elif whence != io.SEEK_SET:
                raise InvalidArgumentError("Seek from end not supported")
            if offset < self.offset:
                raise OSError("Negative seek in write mode")
            zeros = bytes(1024)
            while self.offset < offset:
                self.write(zeros[:min(1024, offset - self.offset)])
            return self.offset
        return self._reader().seek(offset, whence)


def open(filename: Any, mode: str = "rb", compresslevel: int = 9, encoding: str | None = None,
         errors: str | None = None, newline: str | None = None, *,
         device: Where = None) -> Any:
    """Open a gzip file as `gzip.open` does: binary modes r/w/a/x(b) give a `GzipFile`, text
    modes (rt, wt, at, xt) a `TextIOWrapper` around one. `filename` may be a path or a file
    object."""
    if "t" in mode:
        if "b" in mode:
            raise InvalidArgumentError(f"Invalid mode: {mode!r}")
    else:
        for name, value in (("encoding", encoding), ("errors", errors),
                            ("newline", newline)):
            if value is not None:
                raise InvalidArgumentError(f"Argument '{name}' not supported in binary mode")
    gz_mode = mode.replace("t", "")
    if isinstance(filename, str | bytes | os.PathLike):
        binary = GzipFile(filename, gz_mode, compresslevel, device=device)
    elif hasattr(filename, "read") or hasattr(filename, "write"):
        binary = GzipFile(None, gz_mode, compresslevel, filename, device=device)
    else:
        raise TypeError("filename must be a str or bytes object, or a file")
    if "t" in mode:
        return io.TextIOWrapper(binary, io.text_encoding(encoding), errors, newline)
    return binary


def compress(data: Any, compresslevel: int = 9, *, mtime: float | None = None,
             device: Where = None) -> bytes:
    """One gzip member holding `data` (as `gzip.compress`)."""
    blob = _z.compress(data, compresslevel, 31, device=device)
    stamp = int(time.time() if mtime is None else mtime)
    return _gzip_header(b"", stamp, compresslevel) + blob[10:]


def decompress(data: Any, *, device: Where = None) -> bytes:
    """The data of every member (as `gzip.decompress`; zero padding after a member is
    ignored)."""
    with GzipFile(fileobj=io.BytesIO(_z.byte_view(data)), device=device) as f:
        return f.read()
