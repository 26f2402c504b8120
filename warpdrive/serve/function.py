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

from typing import Any

from ..emu.dma import DmaFault
from ..emu.models._qm import BUSY as QM_BUSY
from ..emu.models._qm import PENDING as QM_PENDING
from ..emu.models._qm import Execute, QueueState
from ..emu.models._zip_layout import CQE_SIZE
from ..emu.models.zip import ZipModel
from .broker import BrokerClient, HwQueue
from .sqe import copy_results


class VirtualZip(ZipModel):
    """One client's ZIP function (see the module docstring)."""

    # The broker's loop keeps polling while any client has jobs on the device; this only
    # decides how soon it goes idle afterwards.
    poll_spin_s = 0.02

    def __init__(self, client: BrokerClient, *, revision: int, queues: int = 2,
                 depth: int = 1024) -> None:
        super().__init__(queues=str(queues), depth=str(depth), revision=str(revision),
                         doorbells="mmap", isolation="0")
        self.client = client
        client.on_complete = self._complete
        client.after_completions = self._flush
        self._done: dict[int, list[int]] = {}  # client queue -> completed slots, this pass
        # client queue -> views of its SQ and CQ rings, kept while the queue runs and the
        # client's memory and bus mastering stay as they are
        self._views: dict[int, tuple[memoryview, memoryview]] = {}
        # client queue -> its SQ ring as u64 and u32 words (result copies), kept with _views
        self._words: dict[int, tuple[memoryview, memoryview]] = {}
        # The server polls every client's function back to back: a pass where the doorbell word
        # has not moved and no SQE waits for room is one load and one compare (`poll`). Anything
        # else that can make work (a trapped write, a reset, SQEs left for later) sets this.
        self._recheck = True
        self._cell: Any = None  # the doorbell word the client stores into (`setup`)

    # -- the executor -----------------------------------------------------------------------
    def executor(self) -> Execute:
        return self._submit

    def setup(self) -> None:
        super().setup()
        qm = self._qm()
        qm.queue_started = self._queue_started
        qm.queue_stopped = self._queue_stopped
        qm.execute_run = self._submit_run
        qm.rings = self._rings
        self._cell = self._bells[0][0]  # one doorbell word (no isolation: see __init__)

    def poll(self) -> bool:
        if not self._recheck and self._cell.value == self._last[0]:
            return False
        worked = super().poll()
        # SQEs its share of the hardware had no room for wait in the ring: look again next pass
        self._recheck = any(q.head != q.tail for q in self._qm().queues if q.running)
        return worked

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self._recheck = True  # a trapped doorbell or a mailbox command (a queue start)
        super().region_write(index, offset, data)

    def _queue_started(self, q: QueueState) -> None:
        self._drop_ring(q.qn)
        self.client.start_queue(q.qn, q.alg)

    def _queue_stopped(self, q: QueueState) -> None:
        self._drop_ring(q.qn)
        self.client.stop_queue(q.qn)
        self._done.pop(q.qn, None)

    def _submit_run(self, q: QueueState, sq: memoryview, slot: int, n: int) -> \
            tuple[int, list[int]]:
        return self.client.submit_run(q.qn, sq, slot, n)

    def _submit(self, q: QueueState, sq: memoryview, off: int) -> int | None:
        taken, refused = self.client.submit_run(q.qn, sq, off // q.sqe_size, 1)
        if not taken:
            return QM_BUSY
        return None if refused else QM_PENDING  # refused: the SQE carries its status

    def _rings(self, q: QueueState) -> tuple[memoryview, memoryview]:
        views = self._views.get(q.qn)
        if views is None:
            sq = self.dma.view(q.sq_base, q.sq_depth * q.sqe_size, write=True)
            try:
                cq = self.dma.view(q.cq_base, q.cq_depth * CQE_SIZE, write=True)
            except BaseException:
                sq.release()
                raise
            views = self._views[q.qn] = (sq, cq)
        return views

    def _drop_ring(self, qn: int) -> None:
        for view in (*self._words.pop(qn, ()), *self._views.pop(qn, ())):
            view.release()

    def _drop_rings(self) -> None:
        for qn in list(self._views):
            self._drop_ring(qn)

    def _complete(self, qn: int, hq: HwQueue, hs: int, slot: int, n: int) -> None:
        """Copy the result words of `n` consecutive jobs from the hardware ring (slots `hs`..)
        into the client's SQE slots `slot`.. (`sqe.copy_results`: nothing else of the device's
        SQE, so the device's IOVAs stay the broker's business)."""
        words = self._words.get(qn)
        if words is None:
            try:
                sq = self._rings(self._qm().queues[qn])[0]
            except DmaFault:  # the client unmapped its ring: nowhere to put the results
                return
            words = self._words[qn] = (sq.cast("Q"), sq.cast("I"))
        copy_results(hq.sq64, hq.sq32, hs, words[0], words[1], slot, n)
        done = self._done.get(qn)
        if done is None:
            done = self._done[qn] = []
        done += range(slot, slot + n)

    def _flush(self) -> None:
        qm = self._qm()
        done, self._done = self._done, {}
        for qn, slots in done.items():
            qm.complete(qm.queues[qn], slots)

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
        super().config_write(offset, data)
        if not self.bus_master_enabled():
            self._drop_rings()  # taking them again faults, as the device would

    def reset(self) -> None:
        self._recheck = True
        self.client.reset()
        self._drop_rings()
        self._done.clear()
        qm = self._qm()
        qm.reset()
        qm.stats["resets"] += 1
        self._idle_bells()

    def close(self) -> None:
        self._drop_rings()
        self.client.close()
