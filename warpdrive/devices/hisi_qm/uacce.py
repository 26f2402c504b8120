"""QM queues through uacce (e.g. `/dev/hisi_zip-N`): the kernel's driver (hisi_zip with
uacce_mode=1) did the function bring-up; each open() of the char device is one hardware queue
bound to this process's address space (SVA), so DMA addresses are plain virtual addresses.

Per queue, as UADK's hisi_qm_alloc_qp does it: open, UACCE_CMD_QM_SET_QP_CTX (qc_type 0 compress /
1 decompress; returns the qp id used in doorbells), UACCE_CMD_QM_SET_QP_INFO (depths and SQE size;
older kernels lack it: 1024/128 then), mmap the MMIO doorbell page and the DUS queue memory,
UACCE_CMD_START_Q. The doorbell is at +0x340 in the V1 format for api `hisi_qm_v1`, else at
+0x1000 in the V2 format. SQ at DUS offset 0, CQ after it, TX/RX-stop flags in the last two u32s.

Untested on hardware: this machine (and the QEMU lab) has no HiSilicon QM device, so this path
has only been checked for what can be checked without one (the uAPI layout, discovery errors).
"""

from __future__ import annotations

import errno

from ... import syscalls as sc
from ...dma import DmaSpace
from ...errors import DeviceNotFoundError, KernelError, UnsupportedError, WarpdriveError
from ...sva import SvaDevice, SvaQueue
from ...uapi.hisi_qm import (
    UACCE_CMD_QM_SET_QP_CTX,
    UACCE_CMD_QM_SET_QP_INFO,
    hisi_qp_ctx,
    hisi_qp_info,
)
from . import regs as hw
from .queue import QmQueue
from .wake import WakeGate

_FALLBACK_DEPTH = 1024  # UADK's default when SET_QP_INFO is missing


def api_version(api: str) -> int:
    """QM version from the sysfs `api` string (`hisi_qm_v2` -> 0x21 ...)."""
    prefix = "hisi_qm_v"
    if not api.startswith(prefix) or not api[len(prefix):len(prefix) + 1].isdigit():
        raise UnsupportedError(f"uacce api {api!r} is not a HiSilicon QM")
    v = int(api[len(prefix)])
    return {1: hw.QM_HW_V1, 2: hw.QM_HW_V2}.get(v, hw.QM_HW_V3)


class UacceQueues:
    """A `QueueSource` over one uacce device of a QM accelerator (e.g. hisi_zip-0), opened by
    the uacce backend (`warpdrive.backends.open_uacce`): one uacce queue per engine queue. It
    owns the device from here on (closes it)."""

    backend = "uacce"

    def __init__(self, sva: SvaDevice, accel: hw.QmAccelerator) -> None:
        driver = accel.uacce_driver
        if sva.driver != driver:
            raise DeviceNotFoundError(f"{sva.name!r} is not a {driver} uacce device",
                                      hint=f"names look like {driver}-0 (see `warpdrive devices`)")
        self.name = sva.name
        self.accel = accel
        self.version = api_version(sva.api)
        self._sva = sva
        self._queues: dict[int, SvaQueue] = {}
        # Per queue: each has its own fd, but the kernel's poll of it moves the kernel's own CQ
        # head past what it sees, so of two threads sleeping on one queue only one would wake.
        self._sleepers: dict[int, WakeGate] = {}

    @property
    def dma(self) -> DmaSpace:
        return self._sva.dma

    def start_queue(self, qc_type: int, *, depth: int | None = None,
                    irq: bool = False) -> QmQueue:
        uq = self._sva.open_queue()
        try:
            ctx = hisi_qp_ctx(id=0, qc_type=qc_type)
            uq.ioctl(UACCE_CMD_QM_SET_QP_CTX, ctx, what="UACCE_CMD_QM_SET_QP_CTX")
            qinfo = hisi_qp_info()
            try:
                uq.ioctl(UACCE_CMD_QM_SET_QP_INFO, qinfo, what="UACCE_CMD_QM_SET_QP_INFO")
                sq_depth, cq_depth, sqe_size = qinfo.sq_depth, qinfo.cq_depth, qinfo.sqe_size
            except KernelError as e:
                if e.errno != errno.EINVAL:
                    raise
                sq_depth = cq_depth = _FALLBACK_DEPTH
                sqe_size = self.accel.sqe_size
            if sqe_size != self.accel.sqe_size:
                raise UnsupportedError(f"{self.name} reports {sqe_size}-byte SQEs; "
                                       f"{self.accel.name} uses {self.accel.sqe_size}")
            mmio = uq.map_mmio()
            dus = uq.map_dus()
            layout = hw.QueueLayout(sq_depth, cq_depth, sqe_size, sc.PAGE_SIZE, len(dus))
            if layout.min_size > len(dus):
                raise UnsupportedError(
                    f"the DUS region of {self.name} is {len(dus)} bytes; SQ + CQ + status page "
                    f"need {layout.min_size}", hint="this kernel lays queues out differently")
            if self.version == hw.QM_HW_V1:
                db = mmio.doorbell(hw.QM_DOORBELL_BASE_V1)
                version = 1
            else:
                db = mmio.doorbell(hw.QM_DOORBELL_SQ_CQ_BASE_V2)
                version = 2
            uq.start()
            q = QmQueue(name=f"{self.name}/q{ctx.id}", qn=ctx.id, mem=dus, layout=layout,
                        doorbell=db, db_version=version, irq=irq, lazy_cq=not irq)
        except BaseException:
            uq.close()
            raise
        self._queues[id(q)] = uq
        self._sleepers[id(q)] = WakeGate()
        q.uacce = uq  # type: ignore[attr-defined]
        return q

    def stop_queue(self, q: QmQueue) -> None:
        uq = self._queues.pop(id(q), None)
        self._sleepers.pop(id(q), None)
        if uq is None:
            return
        try:
            q.drain(2.0)
        except WarpdriveError:
            pass
        q.release()
        uq.close()  # UACCE_CMD_PUT_Q stops the hardware queue before the memory goes away

    def wakeups(self, q: QmQueue) -> int:
        gate = self._sleepers.get(id(q))
        return 0 if gate is None else gate.wakeups

    def block(self, q: QmQueue, remaining: float, seen: int | None = None) -> None:
        """Sleep in poll() on the queue fd (the kernel wakes it from the EQ interrupt), one
        thread at a time per queue (`WakeGate`; `seen`: `wakeups`)."""
        uq = self._queues.get(id(q))
        gate = self._sleepers.get(id(q))
        if uq is None or gate is None:
            return
        gate.block(uq.wait, min(remaining, 0.05), seen, quiet=WarpdriveError)

    def close(self) -> None:
        errors = []
        for uq in list(self._queues.values()):
            try:
                uq.close()
            except WarpdriveError as e:
                errors.append(e)
        self._queues.clear()
        self._sleepers.clear()
        self._sva.close()
        if errors:
            raise errors[0]
