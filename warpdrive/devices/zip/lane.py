"""One direction of a ZIP engine (`Lane`): its QM queue, started on first use, its lock, its job
tags, and how a waiter reaps completions.

The lane sees its engine only through `EngineParts`: the engine module imports the lane (and the
sessions and streams built on it), never the reverse.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ...errors import ClosedError, DeviceTimeoutError
from ...pool import BufferPool
from ..hisi_qm.queue import QmQueue
from ..hisi_qm.source import QueueSource
from .errors import ZipError
from .job import Job
from .sqe import Format, SqeTemplate

_BULK_MIN = 4  # completions handed over as one run from this many on (fewer: job by job)


class Loan(Protocol):
    """A view of the engine's memory lent out beyond a call (a pipe's piece of output), which
    the engine's close takes back: a live view would keep that memory from being unmapped."""

    def revoke(self, err: ClosedError) -> None: ...


class EngineParts(Protocol):
    """What lanes, sessions, one-shot jobs and streams use of their engine."""

    @property
    def source(self) -> QueueSource: ...

    @property
    def pool(self) -> BufferPool: ...

    @property
    def lanes(self) -> tuple[Lane, Lane]: ...

    @property
    def depth(self) -> int | None: ...

    @property
    def wait_mode(self) -> str: ...

    @property
    def spin_s(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    @property
    def closed(self) -> bool: ...

    @property
    def loans(self) -> set[Loan]: ...

    def check_open(self) -> None: ...


class Lane:
    """One direction of the engine: its queue (started on first use), lock and tags."""

    def __init__(self, engine: EngineParts, qc_type: int) -> None:
        self.engine = engine
        self.qc_type = qc_type
        self.lock = threading.RLock()
        # Bound once: the hot paths take the lock with these, half the cost of a `with` block.
        self.acquire, self.release = self.lock.acquire, self.lock.release
        # The queue once started (None before, and after close or fork): a plain attribute,
        # read on every poll.
        self.current: QmQueue | None = None
        self._tag = 0
        self.resubmitted = False
        # The last wait outlasted SLOW_S: jobs here take long (large jobs, or a device that
        # shares the CPU, like the model), so the next wait sleeps at once instead of spinning
        # on a core the device may need.
        self.slow = False
        self._templates: dict[tuple[str, int], SqeTemplate] = {}

    @property
    def q(self) -> QmQueue:
        q = self.current
        if q is None:
            with self.lock:
                if self.current is None:
                    eng = self.engine
                    eng.check_open()
                    self.current = eng.source.start_queue(self.qc_type, depth=eng.depth,
                                                     irq=eng.wait_mode != "spin")
                q = self.current
        return q

    @property
    def started(self) -> bool:
        return self.current is not None

    @property
    def _q(self) -> QmQueue | None:
        return self.current

    def forget(self) -> None:
        """Drop the queue without stopping it (a forked child: the rings are not mapped here).
        The lock is a new one too: a parent thread that held it at fork() never lets it go in
        the child, whose calls would hang on it instead of being refused (or, for the default
        engine, moving to a new one)."""
        self.current = None
        self.lock = threading.RLock()
        self.acquire, self.release = self.lock.acquire, self.lock.release

    def template(self, fmt: Format) -> SqeTemplate:
        key = (fmt.container, fmt.window_bits)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = SqeTemplate.for_format(fmt, self.engine.source.version)
        return t

    def next_tag(self) -> int:
        self._tag = (self._tag + 1) & 0xFFFF_FFFF
        return self._tag

    def post(self, job: Job) -> int:
        """Reserve a slot for `job` (waiting for room if the queue is full); caller holds lock."""
        q = self.q
        if q.space <= 0:
            self.make_room(1)
        off = q.post(job, job.owner)
        job.slot_off = off
        job.done = False
        job.error = None
        return off

    def make_room(self, n: int, *, hold: bool = False) -> None:
        """Reap, and wait if need be, until `n` more jobs fit the queue (caller holds lock).
        A blocking wait lets the lock go meanwhile, unless `hold` (the caller has state that
        other holders of the lock would change)."""
        q = self.q
        if n > q.capacity:
            raise ZipError(f"{n} jobs cannot be in flight at once on {q.name} (its limit is "
                           f"{q.capacity})", hint="submit smaller batches")
        self.reap()
        if q.space < n:
            q.ring()
            self.wait_until(lambda: q.space >= n, locked=not hold)

    def reap(self) -> int:
        """Collect completions and hand them to their owners (caller holds `lock`): a run of
        consecutive slots of one owner that takes them in bulk (`on_complete_many`) in one
        call, anything else job by job (`on_complete`)."""
        q = self.current
        if q is None:
            return 0
        total = 0
        while True:
            s0, slots, jobs, owner = q.harvest()
            k = len(jobs)
            if not k:
                break
            total += k
            if k == 1:  # the usual case at low depth: no loop
                job: Job = jobs[0]  # type: ignore[assignment]  # what `post` was given
                job.slot_off = s0 * q.sqe_size
                job.owner.on_complete(job)
            elif k >= _BULK_MIN and s0 >= 0 and \
                    (many := getattr(owner, "on_complete_many", None)) is not None:
                many(q, s0, jobs)
            else:
                size = q.sqe_size
                for job, slot in zip(jobs, slots):  # type: ignore[assignment]
                    job.slot_off = slot * size
                    job.owner.on_complete(job)
            if q.cq_head or not q.outstanding:  # harvest stops at the ring's end: go on
                break                             # only after a wrap
        if self.resubmitted:
            self.resubmitted = False
            q.ring()
        return total

    SLOW_S = 1e-3

    def wait_until(self, done: Callable[[], bool], timeout: float | None = None, *,
                   locked: bool = False, since: float | None = None) -> None:
        """Reap until `done()` is true: busy-poll the CQ in memory (no syscall) for the engine's
        spin time, then block in the source's way (interrupt, or short sleeps). After a wait
        longer than SLOW_S the next one blocks at once (unless wait="spin"). `since`: when
        the caller started waiting (`time.perf_counter`), having polled in its own way until
        now (a one-shot call): the spin time and the first refresh count from then."""
        eng = self.engine
        q = self.q
        timeout = eng.timeout if timeout is None else timeout
        clock = time.perf_counter
        start = clock() if since is None else since
        spin_s = eng.spin_s
        if self.slow and spin_s != float("inf"):  # wait="spin" never sleeps
            spin_s = 0.0
            refresh_at = start
        else:
            refresh_at = start + QmQueue.REFRESH_S
        try:
            self._wait(done, q, timeout, start, refresh_at, spin_s, locked)
        finally:
            self.slow = clock() - start > self.SLOW_S

    # (the one-shot wait, `OneShot._wait`, follows the same two rules)
    POLL_S = 2e-3  # a job still running after this: sleep on it (`poll`)
    YIELD_S = 30e-6  # looked this long: yield between rounds of looks (`poll`)

    def poll(self, done: Callable[[], bool]) -> float | None:
        """Look for `done()` for up to POLL_S before a blocking wait, yielding the CPU between
        rounds of looks past YIELD_S; returns when it started (`wait_until(since=)`: a wait
        still needed sleeps at once), or None when the engine's wait mode says not to poll.
        A stream job on the bundled model takes 0.1-1 ms: the lane's wait spun 100 us, then
        slept, and the wake-up cost ~0.5 ms per job (a 64 KiB-per-call decompressobj loop:
        p50 630 us per job sleeping, 160 us polling; docs/driver-bench.md, session 21). The
        yields are the one-shot wait's reason (`OneShot._wait`): a device sharing our CPU
        gets it at once instead of after a time slice. The lock is taken only to reap, so
        other threads' jobs go on meanwhile."""
        spin = self.engine.spin_s
        if not 0 < spin < float("inf"):
            return None
        q = self.q
        lock = self.lock
        clock = time.perf_counter
        start = clock()
        polite = start + self.YIELD_S
        refresh_at = start + QmQueue.REFRESH_S
        # (never past the timeout, which only `wait_until` reports: as `OneShot._wait`)
        until = start + min(max(spin, self.POLL_S), self.engine.timeout)
        while True:
            if q.completed():
                with lock:
                    self.reap()
            if done():
                return start
            now = clock()
            if now >= until:
                return start
            if now >= refresh_at:  # (as `_wait`: the device alive, the doorbell again)
                q.watchdog()
                with lock:
                    q.ring()
                    q.refresh()
                    self.reap()
                refresh_at = now + QmQueue.REFRESH_S
            elif now >= polite:
                os.sched_yield()

    def _wait(self, done: Callable[[], bool], q: QmQueue, timeout: float, start: float,
              refresh_at: float, spin_s: float, locked: bool) -> None:
        source = self.engine.source
        clock = time.perf_counter
        lock = self.lock
        while True:
            if q.completed():
                with lock:
                    self.reap()
            if done():
                return
            now = clock()
            if now >= refresh_at:
                q.watchdog()
                waited = now - start
                sleeping = waited > spin_s
                with lock:
                    # Before the last look at the CQ (the reap, and the one after a re-arm): a
                    # wake-up another sleeper takes from now on returns our block at once
                    # (`hisi_qm.wake`: the sleepers of a function share its one interrupt).
                    seen = source.wakeups(q)
                    q.ring()
                    q.refresh()
                    self.reap()
                    # `take_one` leaves the CQ head unsent; and no CQ doorbell re-arms a queue's
                    # completion interrupt except this one (see QmQueue): before a block the
                    # device must see the head, and be re-armed if it is to wake us.
                    rearmed = q.cq_lag > 0 or (sleeping and q.irq)
                    if rearmed:
                        q.ring_cq(rearm=sleeping)
                    # After a re-arm, one more look (a job done before it may raise no
                    # interrupt), here: once the lock is let go another thread's reap could
                    # take that CQE (our job with it) and we would sleep with it done.
                    sleep = sleeping and not (rearmed and q.completed())
                if done():
                    return
                if q.outstanding == 0:
                    raise ZipError(f"{q.name}: waiting for a job that is not in flight")
                refresh_at = now + QmQueue.REFRESH_S
                if waited > timeout:
                    raise DeviceTimeoutError(
                        f"{q.name}: {q.outstanding} ZIP job(s) did not complete within "
                        f"{timeout} s", hint="the engine may be wedged or its DMA blocked; close "
                        "it (the function is reset) and check the kernel log")
                if sleep:
                    if locked:
                        lock.release()
                    try:
                        source.block(q, timeout - waited, seen)
                    finally:
                        if locked:
                            lock.acquire()

    def close(self) -> None:
        q, self.current = self.current, None
        if q is not None:
            self.engine.source.stop_queue(q)
