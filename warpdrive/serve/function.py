"""The function a broker client sees: the ZIP model's QM frontend, the broker's executor.

To the client this is a ZIP virtual function like any other (identity, BAR2 registers, mailbox,
queue contexts, the doorbell page it maps, MSI): the model's own `QmFunction` presents it, so the
unchanged ZIP driver brings it up. Only the execution differs: each SQE the frontend takes from
the client's ring goes to `BrokerClient.submit` (checked, translated, onto a hardware queue), and
comes back through `on_complete` (the device's result words into the client's SQE slot, its own
addresses restored) and `QmFunction.complete` (the CQE, the EQE and MSI if the queue asked).
"""

from __future__ import annotations

from ..devices.zip import hw
from ..emu.models._qm import BUSY as QM_BUSY
from ..emu.models._qm import PENDING as QM_PENDING
from ..emu.models._qm import Execute, QueueState
from ..emu.models.zip import ZipModel
from .broker import BUSY, PENDING, BrokerClient
from .sqe import restore


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
        self._rings: dict[int, memoryview] = {}  # client queue -> its SQ ring (writable view)

    # -- the executor -----------------------------------------------------------------------
    def executor(self) -> Execute:
        return self._submit

    def setup(self) -> None:
        super().setup()
        qm = self._qm()
        qm.queue_started = self._queue_started
        qm.queue_stopped = self._queue_stopped

    def _queue_started(self, q: QueueState) -> None:
        self._drop_ring(q.qn)
        self.client.start_queue(q.qn, q.alg)

    def _queue_stopped(self, q: QueueState) -> None:
        self._drop_ring(q.qn)
        self.client.stop_queue(q.qn)
        self._done.pop(q.qn, None)

    def _submit(self, q: QueueState, sq: memoryview, off: int) -> int | None:
        r = self.client.submit(q.qn, sq, off, off // q.sqe_size)
        if r == PENDING:
            return QM_PENDING
        if r == BUSY:
            return QM_BUSY
        return None  # refused: the SQE carries its status; its CQE goes out now

    def _ring(self, qn: int) -> memoryview | None:
        ring = self._rings.get(qn)
        if ring is None:
            q = self._qm().queues[qn]
            try:
                ring = self.dma.view(q.sq_base, q.sq_depth * q.sqe_size, write=True)
            except Exception:  # the client unmapped its ring: nowhere to put the result
                return None
            self._rings[qn] = ring
        return ring

    def _drop_ring(self, qn: int) -> None:
        ring = self._rings.pop(qn, None)
        if ring is not None:
            ring.release()

    def _complete(self, qn: int, slot: int, hw_ring: memoryview, hoff: int,
                  addrs: tuple[int, ...]) -> None:
        ring = self._ring(qn)
        if ring is None:
            return
        off = slot * hw.SQE_SIZE
        ring[off:off + hw.SQE_SIZE] = hw_ring[hoff:hoff + hw.SQE_SIZE]
        restore(ring, off, addrs)
        self._done.setdefault(qn, []).append(slot)

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
        for qn in list(self._rings):
            self._drop_ring(qn)  # taken again on the next completion, if still mapped
        self.client.unmapped(iova, size)

    def reset(self) -> None:
        self.client.reset()
        for qn in list(self._rings):
            self._drop_ring(qn)
        self._done.clear()
        qm = self._qm()
        qm.reset()
        qm.stats["resets"] += 1
        self._idle_bells()

    def close(self) -> None:
        for qn in list(self._rings):
            self._drop_ring(qn)
        self.client.close()
