"""The QM queue layer: one SQ/CQ pair in memory plus its doorbell, as the CPU drives it.

Backend-independent: it is given the queue memory (a VFIO/vfio-user DMA buffer the driver brought
up itself, or the DUS region of a uacce queue the kernel set up) and a `Doorbell`. Reused by every
QM engine (ZIP here; SEC and HPRE share the queue format).

Submission: write SQEs at the tail, then **one 64-bit doorbell store** carrying the new absolute
tail, however many SQEs were written (batching). Completion: the device writes results back into
the SQE slot and then a CQE whose phase bit flips every lap; the CPU polls the phase bit in
memory (no syscall), reads the CQE's `sq_head` to find the slot, and after draining a batch stores
one CQ doorbell with the new CQ head.

Invariants the device model relies on (see `warpdrive.emu.models.zip`):
- at most `depth - 1` jobs are un-reaped, so the CQ can never overflow even if the device never
  sees a CQ doorbell;
- the SQ doorbell carries the absolute tail, so storing it again is idempotent. When the doorbell
  is a *mapped* register that the device may sample (a polled page), it is re-stored after every
  CQ doorbell while work is outstanding (SQ and CQ share one register address, and a polled word
  only shows the latest store), and every `REFRESH_S` while a waiter sees no progress (other
  queues of the function share the address too). A trapped doorbell (a syscall or a message per
  store) is delivered write by write, so it is never repeated.

Ordering: an SQE is written (a copy through a memoryview) before the doorbell store (a separate
ctypes store), and CQE fields are read only after the phase word. x86-64 keeps stores in order
and loads in order (TSO), which is all this needs. On arm64, where HiSilicon parts live, the
kernel puts dma_wmb() before the doorbell's writeq and dma_rmb() after the phase check; Python
has no barrier instruction, so a mapped doorbell there is UNTESTED (a trapped doorbell, being a
syscall, orders by itself).

CQ doorbells: with `lazy_cq` (queues without completion interrupts) the CQ head is sent only
when it has moved by half the ring, and always before the device's view of the CQ (un-reaped
jobs + head not yet sent) could reach the ring size: that is all the device needs to never
overflow the CQ. The kernel and UADK ring it after every drain; that costs a message per reap
on a trapped doorbell, and two stores per reap (CQ, then the SQ doorbell again) on a polled one.
`take_one`, the path of a waiter that spins on its job, is lazy on every queue: after every job
the CQ doorbell cost the client a store and a fence on a line the device polls (~1 us of a
one-shot call).

Completion interrupts (`irq`): a CQ doorbell with priority 1 re-arms the queue's interrupt (the
kernel's "c_flag"; docs/research/hisi-qm-zip.md §7.1). Every routine CQ doorbell here has
priority 0, as UADK's polling mode: a queue that is only polled must not re-arm, since each
re-arm lets the function post an event-queue entry that a poller never acknowledges (on VFIO the
driver owns the EQ, which would fill). A waiter about to sleep on the interrupt re-arms it
first (`ring_cq(rearm=True)`, from `Lane._wait`), as UADK's epoll mode does before poll();
under uacce the kernel never rings a CQ doorbell for the queue, so nothing else would.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Sequence

from ...errors import (
    ClosedError,
    DeviceBusyError,
    DeviceError,
    DeviceTimeoutError,
    InvalidArgumentError,
)
from ...mmio import Doorbell
from ...syscalls import FENCE_ACQUIRE as _FENCE_ACQUIRE
from ...syscalls import FENCE_RELEASE as _FENCE_RELEASE
from . import regs as hw

_W7, _SQ_HEAD = hw.CQE_W7_U16, hw.CQE_SQ_HEAD_U16  # u16 indexes in a CQE (hot-path locals)


def _no_watchdog() -> None:
    return None


def _ready_prefix(words: list[int], phase: int) -> int:
    """How many phase words at the start of `words` carry `phase` (bit 0)."""
    if (phase ^ 1) in words:  # the usual case: CQE status bits are 0, so words are 0 or 1
        k = words.index(phase ^ 1)
        if words[:k].count(phase) == k:
            return k
    k = 0
    for w in words:
        if (w & 1) != phase:
            break
        k += 1
    return k


class QueueStoppedError(DeviceBusyError):
    """The queue's TX/RX-stop flag is set (device reset, FLR, or a hardware error isolated it)."""


class QmQueue:
    """One QM queue pair. Not thread-safe: one owner (a session) at a time, or hold `lock`."""

    REFRESH_S = 200e-6  # re-store the SQ doorbell this often while waiting without progress
    BULK = 4  # from this many waiting CQEs on, `take_one` leaves them to `harvest`

    def __init__(self, *, name: str, qn: int, mem: memoryview, layout: hw.QueueLayout,
                 doorbell: Doorbell, db_version: int = 2, irq: bool = False,
                 lazy_cq: bool = False, watchdog: Callable[[], None] | None = None) -> None:
        if layout.sqe_size % 4:
            raise InvalidArgumentError(f"queue {name}: SQE size {layout.sqe_size} is not a "
                                       "multiple of 4")
        if len(mem) < layout.size:
            raise InvalidArgumentError(f"queue {name}: its memory is {len(mem)} bytes; the layout "
                                       f"needs {layout.size}")
        self.name = name
        self.qn = qn
        self.layout = layout
        self.sqe_size = layout.sqe_size
        self.sq_depth = layout.sq_depth
        self.cq_depth = layout.cq_depth
        # One slot stays empty (as in UADK), and the CQ must never overflow: see module doc.
        self.capacity = min(layout.sq_depth, layout.cq_depth) - 1
        self.mem = mem
        self.sq = mem[layout.sq_offset:layout.sq_offset + layout.sqe_size * layout.sq_depth]
        self.sq32 = self.sq.cast("I")
        cq = mem[layout.cq_offset:layout.cq_offset + hw.CQE_SIZE * layout.cq_depth]
        self.cq16 = cq.cast("H")
        self._flags = mem[layout.rx_stop_offset:layout.rx_stop_offset + 8].cast("I")
        self.doorbell = doorbell
        self._ring = doorbell.ring
        # `submit_one` stores into a mapped doorbell itself (one frame less per job); its
        # callers refuse a forked child before they reach it (the cell is not mapped there).
        parts = doorbell.store_parts()
        self._db_cell: ctypes._SimpleCData[int] | None = parts[0] if parts else None
        self._db_flag: ctypes._SimpleCData[int] | None = parts[1] if parts else None
        self._db_kick: Callable[[], None] | None = parts[2] if parts else None
        self.mapped = doorbell.mapped  # re-store the SQ doorbell (see the module docstring)
        self.lazy_cq = lazy_cq
        # Called on every refresh tick of a wait: raises if the device is known to be gone
        # (`Device.watchdog`: a vfio-user server that died while we polled shared memory).
        self.watchdog: Callable[[], None] = watchdog or _no_watchdog
        self._cq_lazy_limit = max(1, min(layout.sq_depth, layout.cq_depth) // 2)
        encode = hw.doorbell_v2 if db_version >= 2 else hw.doorbell_v1
        self._sq_db = encode(qn, hw.QM_DB_CMD_SQ, 0)
        self._cq_db = encode(qn, hw.QM_DB_CMD_CQ, 0, 0)
        self.irq = irq  # completion interrupts: re-armed before sleeping on them
        self._rearm_db = encode(qn, hw.QM_DB_CMD_CQ, 0, 1)
        self.lock = threading.Lock()
        self.jobs: list[object | None] = [None] * layout.sq_depth
        self.owners: list[object | None] = [None] * layout.sq_depth  # who gets each completion
        # Constant lists the bulk paths slice (C-level) instead of looping per job.
        self._slots = list(range(layout.sq_depth))
        self._nones: list[object | None] = [None] * layout.sq_depth
        self._dw = layout.sqe_size // 4  # SQE size in u32s: slot s starts at sq32[s * _dw]
        self.reset_state()

    def reset_state(self) -> None:
        """Software state of a freshly started queue (head = tail = 0, phase 1)."""
        self.tail = 0  # next SQ slot to fill
        self.rung_tail = 0  # tail carried by the last SQ doorbell
        self.cq_head = 0
        self.cq_lag = 0  # CQ entries consumed but not yet announced by a CQ doorbell
        self.phase = 1
        self.outstanding = 0  # posted and not reaped (rung or not)
        self.unrung = 0
        self.wedged = False  # jobs never completed; the queue waits for a device reset
        self.jobs = [None] * self.sq_depth
        self.owners = [None] * self.sq_depth
        self.taken_slot = -1  # the SQ slot of the job `take_one` returned last
        self.closed = False

    # -- submission -------------------------------------------------------------------------
    @property
    def space(self) -> int:
        return self.capacity - self.outstanding

    def post(self, job: object, owner: object = None) -> int:
        """Reserve the tail slot for `job` (completions go to `owner`) and return its byte
        offset in `self.sq`; the caller writes the SQE there, then calls `ring()` (once per
        batch)."""
        if self.outstanding >= self.capacity:
            raise DeviceBusyError(
                f"queue {self.name} has {self.outstanding} jobs in flight (its limit)",
                hint="reap completions (poll) before submitting more")
        if self.cq_lag and self.outstanding + self.cq_lag >= self.capacity:
            self.ring_cq()  # the device must see room in the CQ for this job
        slot = self.tail
        self.jobs[slot] = job
        self.owners[slot] = owner
        self.tail = slot + 1 if slot + 1 < self.sq_depth else 0
        self.outstanding += 1
        self.unrung += 1
        return slot * self.sqe_size

    def submit_one(self, job: object, owner: object, sqe: bytes, ring: bool = True) -> int:
        """`post`, copy the SQE into the slot and (with `ring`) `ring`, in one call: the
        single-job hot path. Returns the slot's byte offset, or -1 when the queue is full
        (nothing posted: make room, then call again)."""
        out = self.outstanding
        if out >= self.capacity:
            return -1
        if self.cq_lag and out + self.cq_lag >= self.capacity:
            self.ring_cq()  # the device must see room in the CQ for this job
        t = self.tail
        self.jobs[t] = job
        self.owners[t] = owner
        off = t * self.sqe_size
        self.sq[off:off + self.sqe_size] = sqe
        t += 1
        if t == self.sq_depth:
            t = 0
        self.tail = t
        self.outstanding = out + 1
        if not ring:
            self.unrung += 1
            return off
        if self._flags[1]:  # TX-stop: the job stays posted (unrung), as with post + ring
            self.unrung += 1
            self._tx_stopped()
        cell = self._db_cell
        if cell is None:
            self._ring(self._sq_db | t << 32)
        else:  # Doorbell.ring, inlined: the store, then the wake-up check if it has one
            cell.value = self._sq_db | t << 32
            if self._db_flag is not None:
                _FENCE_ACQUIRE()
                _FENCE_RELEASE()
                if self._db_flag.value:
                    self._db_kick()  # type: ignore[misc]
        self.rung_tail = t
        self.unrung = 0
        return off

    def post_many(self, jobs: Sequence[object], owner: object = None) -> int:
        """Reserve `len(jobs)` consecutive slots (wrapping at the end of the ring) for `jobs` of
        one `owner`, in order, and return the first; the caller writes their SQEs
        (`write_sqes`), then rings once. All or nothing: raises DeviceBusyError, reserving none,
        if they do not fit."""
        n = len(jobs)
        out = self.outstanding
        if out + n > self.capacity:
            raise DeviceBusyError(
                f"queue {self.name} has room for {self.capacity - out} more job(s); "
                f"{n} were submitted at once", hint="reap completions (poll) first, or submit "
                "smaller batches")
        if self.cq_lag and out + n + self.cq_lag > self.capacity:
            self.ring_cq()  # the device must see room in the CQ for these jobs
        t = self.tail
        end = t + n
        depth = self.sq_depth
        owners = [owner] * n
        if end < depth:
            self.jobs[t:end] = jobs
            self.owners[t:end] = owners
            self.tail = end
        else:
            k = depth - t
            self.jobs[t:] = jobs[:k]
            self.jobs[:end - depth] = jobs[k:]
            self.owners[t:] = owners[:k]
            self.owners[:end - depth] = owners[k:]
            self.tail = end - depth
        self.outstanding = out + n
        self.unrung += n
        return t

    def write_sqes(self, slot: int, sqes: bytes | bytearray | memoryview) -> None:
        """Copy consecutive SQEs (a multiple of the SQE size) into the ring from `slot` on,
        wrapping at its end: one or two memory copies for a whole batch."""
        sq = self.sq
        off = slot * self.sqe_size
        end = off + len(sqes)
        if end <= len(sq):
            sq[off:end] = sqes
        else:
            k = len(sq) - off
            mv = memoryview(sqes)
            sq[off:] = mv[:k]
            sq[:end - len(sq)] = mv[k:]

    def unpost(self) -> None:
        """Take back the most recent `post` (its SQE could not be built)."""
        if not self.unrung:
            raise DeviceError(f"queue {self.name}: nothing to take back")
        self.tail = (self.tail - 1) % self.sq_depth
        self.jobs[self.tail] = self.owners[self.tail] = None
        self.outstanding -= 1
        self.unrung -= 1

    def ring(self) -> None:
        """One SQ doorbell for everything posted since the last one."""
        if not self.unrung:
            return
        if self._flags[1]:  # TX-stop (last u32 of the queue memory)
            self._tx_stopped()
        self._ring(self._sq_db | self.tail << 32)
        self.rung_tail = self.tail
        self.unrung = 0

    def _tx_stopped(self) -> None:
        raise QueueStoppedError(
            f"queue {self.name} is stopped (TX-stop flag set: reset or hardware error)",
            hint="close the session and open a new one")

    def refresh(self) -> None:
        """Store the last SQ doorbell again (same absolute tail: no new work on hardware);
        only for a mapped doorbell, which a device may sample rather than latch."""
        if self.mapped and self.outstanding > self.unrung:
            self._ring(self._sq_db | self.rung_tail << 32)

    def ring_cq(self, rearm: bool = False) -> None:
        """Announce the CQ head (RX-stop checked first, as UADK does); with `rearm`, on a
        queue with completion interrupts, with priority 1, re-arming its interrupt (see the
        module docstring): only for a waiter about to sleep on it."""
        if self._flags[0]:  # RX-stop
            raise QueueStoppedError(
                f"queue {self.name} is stopped (RX-stop flag set: reset or hardware error)",
                hint="close the session and open a new one")
        self._ring((self._rearm_db if rearm and self.irq else self._cq_db) | self.cq_head << 32)
        self.cq_lag = 0
        if self.mapped and self.outstanding > self.unrung:
            self._ring(self._sq_db | self.rung_tail << 32)

    # -- completion -------------------------------------------------------------------------
    def completed(self, n: int = 1) -> bool:
        """True if `n` (1..depth) CQEs are waiting: one load of the n-th one's phase word, no
        side effect. (The device writes CQEs in ring order.)"""
        i = self.cq_head + n - 1
        if i < self.cq_depth:
            return (self.cq16[i * 8 + hw.CQE_W7_U16] & 1) == self.phase
        return (self.cq16[(i - self.cq_depth) * 8 + hw.CQE_W7_U16] & 1) != self.phase

    def reap(self) -> list[object]:
        """Collect every finished job (in completion order); see `harvest`."""
        done: list[object] = []
        while True:
            jobs = self.harvest()[2]
            if not jobs:
                return done
            done += jobs

    def harvest(self) -> tuple[int, list[int], list[object], object]:
        """Take the CQEs waiting from the CQ head up to the ring's end (not past it: call again
        after a wrap), in one pass over their phase words, and ring the CQ doorbell as `reap`
        does. Returns (first slot, slots, jobs, owner): the SQ slots the CQEs name and the jobs
        posted there, in completion order; the first slot is -1 unless the slots are
        consecutive (s, s+1, ...) without wrapping, when their SQEs can be read as one block;
        `owner` is the jobs' owner if they all have the same one, else None.
        Raises DeviceError (taking nothing) if a CQE names a slot that holds no job."""
        out = self.outstanding
        head, phase = self.cq_head, self.phase
        cq16 = self.cq16
        w7 = head * 8 + _W7
        if not out or (cq16[w7] & 1) != phase:
            return -1, [], [], None
        n = self.cq_depth - head
        if n > out:
            n = out
        qjobs, qowners = self.jobs, self.owners
        if n == 1 or (cq16[w7 + 8] & 1) != phase:  # one CQE: no lists to build
            s0 = cq16[w7 - _W7 + _SQ_HEAD]
            job = qjobs[s0] if s0 < self.sq_depth else None
            if job is None:
                self._no_job(head, s0)
            owner = qowners[s0]
            qjobs[s0] = qowners[s0] = None
            k, slots, jobs = 1, [s0], [job]
        else:
            # One strided read of the phase words (loads in order: the sq_head words are read
            # after the phase words that cover them).
            words = cq16[w7:w7 + 8 * n:8].tolist()
            k = n if words.count(phase) == n else _ready_prefix(words, phase)
            b = head * 8 + _SQ_HEAD
            slots = cq16[b:b + 8 * k:8].tolist()
            s0 = slots[0]
            if s0 + k <= self.sq_depth and slots == self._slots[s0:s0 + k]:
                jobs = qjobs[s0:s0 + k]
                if None in jobs:
                    self._no_job(head + jobs.index(None), s0 + jobs.index(None))
                owners = qowners[s0:s0 + k]
                qjobs[s0:s0 + k] = qowners[s0:s0 + k] = self._nones[:k]
            else:
                s0 = -1
                jobs, owners = [], []
                for i, slot in enumerate(slots):
                    job = qjobs[slot] if slot < self.sq_depth else None
                    if job is None:  # also a slot named twice: taken the first time
                        for j, o, s in zip(jobs, owners, slots):  # undo: take nothing
                            qjobs[s], qowners[s] = j, o
                        self._no_job(head + i, slot)
                    jobs.append(job)
                    owners.append(qowners[slot])
                    qjobs[slot] = qowners[slot] = None
            owner = owners[0]
            if owners.count(owner) != k:
                owner = None
        head += k
        if head == self.cq_depth:
            head, phase = 0, phase ^ 1
        self.cq_head, self.phase = head, phase
        self.outstanding = out - k
        self.cq_lag += k
        if not self.lazy_cq or self.cq_lag >= self._cq_lazy_limit:
            self.ring_cq()
        return s0, slots, jobs, owner

    def take_one(self, owner: object) -> object | None:
        """The few-completions hot path (a queue driven one job or a few at a time): if the CQE
        at the head names a slot holding a job of `owner` and fewer than `BULK` CQEs wait, take
        it as `harvest` would (but the CQ doorbell lazily, whatever `lazy_cq` says: see the
        module docstring) and return the job; its SQ slot is then `taken_slot`. Otherwise
        None, taking nothing: nothing or `BULK` or more waiting (`harvest` reads them in one
        pass), another owner's job, or a CQE naming no job (`harvest` raises)."""
        out = self.outstanding
        head = self.cq_head
        cq16 = self.cq16
        w7 = head * 8 + _W7
        phase = self.phase
        if not out or (cq16[w7] & 1) != phase:
            return None
        if out >= self.BULK and head + self.BULK <= self.cq_depth and \
                (cq16[w7 + 8 * (self.BULK - 1)] & 1) == phase:
            return None  # a run: harvest it (CQEs are written in ring order)
        s0 = cq16[w7 - _W7 + _SQ_HEAD]
        if s0 >= self.sq_depth:
            return None
        owners = self.owners
        job = self.jobs[s0]
        if job is None or owners[s0] is not owner:
            return None
        self.jobs[s0] = owners[s0] = None
        self.taken_slot = s0
        head += 1
        if head == self.cq_depth:
            self.cq_head, self.phase = 0, phase ^ 1
        else:
            self.cq_head = head
        self.outstanding = out - 1
        if (lag := self.cq_lag + 1) >= self._cq_lazy_limit:  # lazy on every queue, see the
            self.ring_cq()                                    # module docstring
        else:
            self.cq_lag = lag
        return job

    def _no_job(self, cqe: int, slot: int) -> None:
        raise DeviceError(
            f"queue {self.name}: CQE {cqe % self.cq_depth} names SQ slot {slot}, which holds "
            "no job", hint="the device (or model) is misbehaving; close and reset it")

    def wait(self, timeout: float, *, spin_s: float = float("inf"),
             block: Callable[[float], None] | None = None) -> list[object]:
        """Reap at least one job. Busy-polls the CQ in memory (no syscall) for `spin_s`, then
        calls `block(remaining)` between polls (an interrupt wait or a short sleep).
        Raises DeviceTimeoutError when nothing completes within `timeout` seconds."""
        done = self.reap()
        if done:
            return done
        if self.outstanding == 0:
            raise DeviceError(f"queue {self.name}: waiting with no job in flight")
        if self.unrung:
            self.ring()
        clock = time.perf_counter
        start = clock()
        refresh_at = start + self.REFRESH_S
        ph_index = hw.CQE_W7_U16
        cq16 = self.cq16
        while True:
            if (cq16[self.cq_head * 8 + ph_index] & 1) == self.phase:
                return self.reap()
            now = clock()
            if now >= refresh_at:
                if self.closed:
                    raise ClosedError(f"queue {self.name} was closed while waiting")
                self.watchdog()
                self.refresh()
                refresh_at = now + self.REFRESH_S
                if now - start > timeout:
                    raise DeviceTimeoutError(
                        f"queue {self.name}: {self.outstanding} job(s) did not complete within "
                        f"{timeout} s",
                        hint="the device may be wedged or its DMA blocked by the IOMMU; close "
                        "the device (it is reset on close) and check the kernel log")
                if block is not None and now - start > spin_s:
                    block(timeout - (now - start))

    def drain(self, timeout: float) -> list[object]:
        """Wait for every outstanding job (used before stopping the queue)."""
        out: list[object] = []
        deadline = time.monotonic() + timeout
        while self.outstanding:
            self.ring()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceTimeoutError(
                    f"queue {self.name}: {self.outstanding} job(s) still in flight after "
                    f"{timeout} s", hint="the device will be reset")
            out += self.wait(left, spin_s=1e-3, block=lambda _left: time.sleep(50e-6))
        return out

    # -- stop flags (the driver sets them itself on VFIO; the kernel does on uacce) ----------
    @property
    def stopped(self) -> bool:
        return bool(self._flags[0] or self._flags[1])

    def set_stopped(self, stopped: bool = True) -> None:
        self._flags[1] = int(stopped)
        self._flags[0] = int(stopped)

    def release(self) -> None:
        """Drop the views on the queue memory (before the memory is unmapped)."""
        self.closed = True
        for v in (self.sq32, self.cq16, self._flags, self.sq):
            v.release()

    def __repr__(self) -> str:
        return (f"<QmQueue {self.name} qn={self.qn} depth={self.sq_depth} "
                f"outstanding={self.outstanding}>")
