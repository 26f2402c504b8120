"""The ZIP engine: a compress and a decompress queue on one function, a buffer pool, and the
sessions, one-shot jobs and streams built on them.

The engine does not know its backend: it is handed a `QueueSource` (a VF brought up over a
`Device` by `hisi_qm.bringup.QmDevice`, or uacce queues the kernel set up,
`hisi_qm.uacce.UacceQueues`) and only uses its DMA space, its queues and its way of blocking.
Imports go one way: this module builds lanes, sessions, one-shot jobs and streams; they see it
only through `lane.EngineParts`.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import ClosedError, ConnectionLostError, InvalidArgumentError, WarpdriveError
from ...forkguard import ForkSafe
from ...pool import BufferPool
from ..hisi_qm.queue import QueueStoppedError
from ..hisi_qm.source import QueueSource
from .errors import ZipDataError
from .job import COMPRESS, DECOMPRESS, DECOMPRESS_JOB_MAX, DIRECTIONS
from .lane import Lane, Loan
from .oneshot import OneShot
from .session import Session
from .sqe import Format
from .stream import SPLIT_MIN, Inflater, compress_pieces


def _bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    """`data` as a flat byte view (as it comes from warpdrive.zip: no new view per call)."""
    if data.__class__ is memoryview and data.format == "B" and data.ndim == 1 \
            and data.c_contiguous:
        return data
    return memoryview(data).cast("B")


class ZipEngine(ForkSafe):
    """A ZIP function: one queue per direction, a buffer pool, sessions and streams on top.

    Fork: the queue memory and doorbells are not mapped in a forked child (MADV_DONTFORK), so the
    child's copy of an engine is dead: every entry point raises ForkedContextError and `poll`
    finds nothing. Open a new engine in the child."""

    def __init__(self, source: QueueSource, *, depth: int | None = None, wait: str = "auto",
                 spin_us: float = 100.0, timeout: float = 30.0,
                 on_close: Callable[[], None] | None = None) -> None:
        if wait not in ("auto", "spin", "block"):
            raise InvalidArgumentError(f"wait must be auto, spin or block, not {wait!r}")
        self.source = source
        self.name = source.name
        self.depth = depth
        self.wait_mode = wait
        self.spin_s = float("inf") if wait == "spin" else 0.0 if wait == "block" else \
            spin_us * 1e-6
        self.timeout = timeout
        self.pool = BufferPool(source.dma)
        self.lanes = (Lane(self, COMPRESS), Lane(self, DECOMPRESS))
        # The one-shot functions' state per lane, kept for the engine's life (oneshot.py).
        # (index 0 compresses, 1 decompresses: warpdrive.zip's fast calls pick them so)
        self.oneshots = (OneShot(self, self.lanes[COMPRESS], compress_max=SPLIT_MIN - 1),
                         OneShot(self, self.lanes[DECOMPRESS]))
        self._on_close = on_close
        self._closed = False
        self._sessions: list[Session] = []
        # Views of this engine's memory lent out beyond a call (a pipe's piece that a GzipFile
        # is reading): the close takes them back (lane.Loan) instead of being refused.
        self.loans: set[Loan] = set()
        self._fork_register()

    def check_open(self) -> None:
        """Raise if the engine is closed or was inherited through fork()."""
        self._check_alive()
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"ZIP engine {self.name} is closed",
                           hint="open a new engine (warpdrive.zip.open_engine)")

    def _fork_describe(self) -> str:
        return f"ZIP engine {self.name}"

    def _fork_invalidate(self) -> None:
        # Drop the child's references to rings that are not mapped here (touching them would
        # fault); the parent still owns the queues.
        for lane in self.lanes:
            lane.forget()
        for s in self._sessions:
            s.forked()
        self._closed = True

    @property
    def backend(self) -> str:
        return self.source.backend

    def trim(self) -> None:
        """Unmap the DMA memory the engine keeps for reuse and is not using (its pool, see
        `warpdrive.pool`): what a long-running service calls after a burst of large jobs when
        it will not wait for the pool's own IDLE_S rule (which runs at the next job)."""
        self.check_open()
        self.pool.trim()

    def session(self, direction: str = "compress", *, wbits: int = 15, level: int = -1,
                format: str | None = None, own_queue: bool = False) -> Session:
        """A batch session: many stateless jobs in flight, one doorbell per `flush()`.
        `own_queue`: the session gets a queue pair of its own (one of the function's, started
        on first use, stopped when it closes), shared with no other session: one thread can
        drive several such sessions, and the device works on their queues at once."""
        self.check_open()
        if direction not in DIRECTIONS:
            raise InvalidArgumentError(f"direction must be compress or decompress, not "
                                       f"{direction!r}")
        decompress = direction == "decompress"
        fmt = Format.named(format) if format else Format.from_wbits(wbits,
                                                                     decompress=decompress)
        qc = DIRECTIONS[direction]
        s = Session(self, qc, fmt, level, on_close=self._forget_session,
                    lane=Lane(self, qc) if own_queue else None)
        self._sessions.append(s)
        return s

    # -- one-shot helpers (zlib-shaped API lives in warpdrive.zip) --------------------------
    def compress(self, data: bytes | bytearray | memoryview, level: int = -1,
                 wbits: int = 15) -> bytes:
        one = self.oneshots[COMPRESS]
        fmt = one.fmt(wbits, False)
        mv = _bytes_view(data)
        if len(mv) >= SPLIT_MIN:
            return compress_pieces(self, mv, fmt, level)
        lane = one.lane
        lane.acquire()
        try:
            return one.compress(mv, fmt, level)
        finally:
            lane.release()

    def decompress(self, data: bytes | bytearray | memoryview, wbits: int = 15,
                   bufsize: int = 0) -> bytes:
        one = self.oneshots[DECOMPRESS]
        fmt = one.fmt(wbits, True)
        mv = _bytes_view(data)
        if len(mv) <= DECOMPRESS_JOB_MAX:
            lane = one.lane
            lane.acquire()
            try:
                out = one.decompress(mv, fmt, bufsize)
            finally:
                lane.release()
            if out is not None:
                return out
        inf = Inflater(self, fmt)
        try:
            out = inf.decompress(mv)
            if not inf.eof:
                raise ZipDataError("Error -5 while decompressing data: incomplete or truncated "
                                   "stream")
            return out
        finally:
            inf.close()

    def _forget_session(self, session: Session) -> None:
        if session in self._sessions:
            self._sessions.remove(session)

    def close(self) -> None:
        if self._closed:
            return
        errors: list[BaseException] = []
        self._fork_unregister()
        for s in list(self._sessions):
            try:
                s.close()
            except WarpdriveError as e:
                errors.append(e)
        self._closed = True
        for lane in self.lanes:
            try:
                lane.close()
            except WarpdriveError as e:
                errors.append(e)
        for one in self.oneshots:
            one.close()
        # (the queues are stopped: no job of a pipe runs on the memory its loan is in)
        for loan in list(self.loans):
            loan.revoke(self._closed_error())
        self.loans.clear()
        self.pool.close()
        try:
            self.source.close()
        except WarpdriveError as e:
            errors.append(e)
        if self._on_close is not None:
            self._on_close()
        # A device that went away (its vfio-user server died) took its queues and jobs with it,
        # and a queue the device stopped (a CQ overflow or CQE error on its AEQ, a reset) took
        # its jobs: closing has nothing left to release there, and says nothing about it (the
        # waiters were told).
        errors = [e for e in errors
                  if not isinstance(e, (ConnectionLostError, QueueStoppedError))]
        if errors:
            raise errors[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ZipEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ZipEngine {self.name} backend={self.backend}{' closed' if self._closed else ''}>"
