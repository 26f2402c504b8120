"""The function a broker client sees: the ZIP model's QM frontend, the broker's executor.

To the client this is a ZIP virtual function like any other (identity, BAR2 registers, mailbox,
queue contexts, the doorbell page it maps, MSI): the model's own `QmFunction` presents it, so the
unchanged ZIP driver brings it up. Only the execution differs: each run of SQEs the frontend takes
from the client's ring goes to `BrokerClient.submit_run` (checked, translated, onto a hardware
queue), and comes back through `on_complete` (only the device's result words go into the
client's SQE slots: its own addresses stay as it wrote them) and `QmFunction.complete` (the
CQEs, the EQE and MSI if the queue asked).
"""

from __future__ import annotations

import logging

from ..emu.dma import DmaFault
from ..emu.models._qm import BUSY as QM_BUSY
from ..emu.models._qm import PENDING as QM_PENDING
from ..emu.models._qm import Execute, QueueState
from ..emu.models._zip_layout import (
    QM_DB_CMD_CQ,
    QM_DB_CMD_SHIFT_V2,
    QM_DB_CMD_SQ,
)
from ..emu.models.zip import ZipModel
from .broker import BrokerClient, HwQueue
from .sqe import copy_results

log = logging.getLogger("warpdrive.serve")

# The doorbell value's fields (`_zip_layout.doorbell_decode_v2`), decoded inline on the hot path.
_DB_QN, _DB_CMD_SHIFT, _DB_SQ, _DB_CQ = 0x7FF, QM_DB_CMD_SHIFT_V2, QM_DB_CMD_SQ, QM_DB_CMD_CQ


# How long a client's config write that turns bus mastering off waits for its jobs on the
# device (Linux waits 0.7 s for Transactions Pending before a reset: pci_wait_for_pending).
BUS_MASTER_DRAIN_S = 0.7


class VirtualZip(ZipModel):
    """One client's ZIP function (see the module docstring)."""

    # The broker's loop keeps polling while any client has jobs on the device; this only
    # decides how soon it goes idle afterwards.
    poll_spin_s = 0.02
    # A production broker hands its clients no fault injection (the model's DBG_INJECT).
    fault_injection = False

    def __init__(self, client: BrokerClient, *, revision: int, queues: int = 2,
                 depth: int = 1024) -> None:
        super().__init__(queues=str(queues), depth=str(depth), revision=str(revision),
                         doorbells="mmap", isolation="0")
        self.client = client
        client.on_complete = self._complete
        client.after_completions = self._flush
        # client queue -> its state, for queues that completed jobs this pass and asked for
        # completion interrupts (signalled once, after the pass's completions: `_flush`)
        self._signal: dict[int, QueueState] = {}
        # client queue -> its SQ ring as u64 and u32 words (result copies), kept with _views
        self._words: dict[int, tuple[memoryview, memoryview]] = {}

    # -- the executor -----------------------------------------------------------------------
    def executor(self) -> Execute:
        return self._submit

    def setup(self) -> None:
        super().setup()
        qm = self._qm()
        qm.queue_started = self._queue_started
        qm.queue_stopped = self._queue_stopped
        qm.execute_run = self._submit_run
        # (`_cell`, the one doorbell word the client stores into, is ZipModel.setup's: no
        # isolation, see __init__)

    def poll(self) -> bool:
        v = self._cell.value
        last = self._last
        if v == last[0]:
            if not self._recheck:
                return False
        elif not self._recheck:
            return self._doorbell(v)
        # (it clears `_recheck` unless SQEs its share of the hardware had no room for wait)
        return super().poll()

    def _doorbell(self, v: int) -> bool:
        """The doorbell word moved and nothing else can have made work (no trapped write, no
        reset, no SQE left waiting: `_recheck` is clear), so only the queue the value names can
        have new SQEs. What `ZipModel.poll` does then (`QmFunction.doorbell`, then `process`),
        for that one queue and in fewer frames: the common pass of a busy client."""
        self._last[0] = v
        qm = self.qm
        assert qm is not None
        qm.stats["doorbells"] += 1
        qn = v & _DB_QN
        if qn >= qm.qp_num:
            return False
        q = qm.queues[qn]
        index = v >> 32 & 0xFFFF
        cmd = v >> _DB_CMD_SHIFT & 0xF
        if cmd == _DB_SQ:
            if not q.sqc_ok or index >= q.sq_depth:
                return False
            q.tail = index
            if index == q.head or not q.running:
                return False
            views = self._views.get(qn)
            if views is None:  # (rings not taken yet: the function's own path takes them)
                taken = qm._run_queue(q, qm.JOB_BUDGET)
                self._recheck = q.head != q.tail
                return taken > 0
            # `QmFunction._run_queue_runs` on the rings kept here, one frame per run fewer.
            # (`process`'s interrupt check is not needed: only refused SQEs complete here, and
            # `QmFunction.complete` signals them itself.)
            sq, depth, head = views[0], q.sq_depth, q.head
            todo = (index - head) % depth
            if todo > qm.JOB_BUDGET:
                todo = qm.JOB_BUDGET
            submit = self.client.submit_run
            taken = 0
            while todo:
                n = depth - head if head + todo > depth else todo
                k, done = submit(qn, sq, head, n)
                taken += k
                todo -= k
                head = head + k if head + k < depth else 0
                q.head = head
                if done:
                    qm.complete(q, done)
                if k < n:
                    break  # no room on the hardware: the rest wait in the ring (_recheck)
            self._recheck = head != index
            return taken > 0
        if cmd == _DB_CQ and q.cqc_ok and index < q.cq_depth:
            q.cq_head = index
        return False

    def _queue_started(self, q: QueueState) -> None:
        self._drop_ring(q.qn)
        self.client.start_queue(q.qn, q.alg)

    def _queue_stopped(self, q: QueueState) -> None:
        self._drop_ring(q.qn)
        self.client.stop_queue(q.qn)
        self._signal.pop(q.qn, None)

    def _submit_run(self, q: QueueState, sq: memoryview, slot: int, n: int) -> \
            tuple[int, list[int]]:
        return self.client.submit_run(q.qn, sq, slot, n)

    def _submit(self, q: QueueState, sq: memoryview, off: int) -> int | None:
        taken, refused = self.client.submit_run(q.qn, sq, off // q.sqe_size, 1)
        if not taken:
            return QM_BUSY
        return None if refused else QM_PENDING  # refused: the SQE carries its status

    def _drop_ring(self, qn: int) -> None:
        for view in self._words.pop(qn, ()):
            view.release()
        super()._drop_ring(qn)

    def _complete(self, qn: int, hq: HwQueue, hs: int, slot: int, n: int) -> None:
        """Copy the result words of `n` consecutive jobs from the hardware ring (slots `hs`..)
        into the client's SQE slots `slot`.. (`sqe.copy_results`: nothing else of the device's
        SQE, so the device's IOVAs stay the broker's business), then post their CQEs, as
        `QmFunction.complete` does, on the rings kept here; the EQE (and MSI) for the queue,
        if it asked for one, goes out once after the pass's completions (`_flush`)."""
        words = self._words.get(qn)
        if words is None:
            try:
                sq = self._rings(self._qm().queues[qn])[0]
            except DmaFault:  # the client unmapped its ring: nowhere to put the results
                return
            words = self._words[qn] = (sq.cast("Q"), sq.cast("I"))
        copy_results(hq.sq64, hq.sq32, hs, words[0], words[1], slot, n)
        qm = self.qm
        assert qm is not None
        q = qm.queues[qn]
        if not q.running:
            return  # stopped or restarted meanwhile: those jobs belong to an earlier life
        qm._post_cqes(q, self._views[qn][1], range(slot, slot + n))
        q.completed += n
        qm.stats["jobs"] += n
        if q.cq_irq and q.eqe_posted_at is None:
            self._signal[qn] = q

    def _flush(self) -> None:
        if self._signal:
            signal = [q for q in self._signal.values() if q.eqe_posted_at is None]
            self._signal.clear()
            self._qm()._interrupt(signal)

    # -- the client's memory and life -------------------------------------------------------
    def on_dma_map(self, iova: int, size: int, fd: int | None, offset: int, readable: bool,
                   writable: bool) -> None:
        if fd is None:
            return  # unreachable memory (recorded by the server; any SQE naming it faults)
        self.client.mapped(iova, size, fd, offset, readable, writable)

    def on_dma_unmap(self, iova: int, size: int) -> None:
        self._drop_rings()  # taken again on the next pass, if still mapped
        self.client.unmapped(iova, size)

    def config_write(self, offset: int, data: bytes) -> None:
        master = self.bus_master_enabled()
        super().config_write(offset, data)
        if master and not self.bus_master_enabled():
            left = self.client.quiesce(BUS_MASTER_DRAIN_S)
            if left:
                log.warning("%s: bus mastering off with %d job(s) still on the device after "
                            "%.1f s: they may still write its memory", self.client.name, left,
                            BUS_MASTER_DRAIN_S)

    def reset(self) -> None:
        self.client.reset()
        self._signal.clear()
        super().reset()  # (its engine, `jobs`, is idle here: the broker executes)

    def close(self) -> None:
        self._drop_rings()
        self.client.close()
