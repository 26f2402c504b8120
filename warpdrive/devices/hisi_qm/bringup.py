"""Bring up a HiSilicon QM virtual function from user space, over any `Device` backend.

What the kernel's hisi_qm does for a VF (hisi_qm_init -> hisi_qm_start -> hisi_qm_start_qp), done
here through `Device`/`DmaSpace`/`Mmio` so it works the same on a real VF bound to vfio-pci
(legacy VFIO or iommufd) and on the bundled model over vfio-user:

1. bus mastering on; map BAR2 (the doorbell page directly, or everything trapped for
   `doorbell="message"`); QM version = PCI revision; capabilities as hisi_qm reads them (V2: the
   kernel's V2 table; V3: the doorbell-isolation bit, the capability version and, if that is
   non-zero, the capability registers, else the V3 table); with doorbell isolation, BAR4.
2. Mailbox SQC_VFT_V2 (read) -> the VF's queue base and count (0x304/0x308). Every mailbox is
   four ascending 32-bit stores, the way Linux sends it on x86.
3. One DMA block: EQ and AEQ rings, the SQC and CQC tables, a mailbox scratch context.
4. Mailbox EQC, AEQC, SQC_BT, CQC_BT.
5. Interrupts: MSI vectors (EQ 0, AEQ 1) to eventfds; EQ/AEQ doorbells with head 0; unmask;
   V3: QM_VF_STATE = ready.
6. Per queue (`start_queue`): queue memory (SQ, CQ, status page), mailbox SQC then CQC.
Events (docs/research/hisi-qm-zip.md §7.2): every waiter's refresh tick (the queue's watchdog)
looks at the AEQ and the EQ in memory (two loads). A CQE-error or CQ-overflow AEQE stops the
queue it names (its stop flags: its waiters and submitters get QueueStoppedError saying why),
as Linux's qm_aeq_thread does; an EQ-overflow AEQE reloads the EQ (Linux resets the whole
function; the queues here keep running, and every waiter looks at its CQ after a wake-up
anyway). EQEs a waiter left behind (a re-arm followed by a completion it then saw without
sleeping) are acknowledged there too, so the EQ does not fill.
Close: set the queues' stop flags, drain, (V3: STOP_QP), mask interrupts, (V3: not ready),
reset the function so no DMA can be in flight, then release the memory.

A PF needs more (memory init, VFT programming, engine setup) and is refused.
"""

from __future__ import annotations

import logging
import struct
import threading
import time

from ...device import Device, Interrupt
from ...dma import DmaBuffer, DmaSpace
from ...errors import (
    ConnectionLostError,
    DeviceBusyError,
    DeviceError,
    DeviceTimeoutError,
    InvalidArgumentError,
    UnsupportedError,
    WarpdriveError,
)
from ...mmio import Mmio
from ...record import record
from ...uapi.vfio import VFIO_PCI_MSI_IRQ_INDEX
from . import regs as hw
from .queue import QmQueue, QueueStoppedError
from .wake import WakeGate

log = logging.getLogger("warpdrive.qm")
# AEQE types (what the function reports; §7.2)
_AEQE_NAMES = {hw.AEQE_TYPE_CQ_OVERFLOW: "CQ overflow", hw.AEQE_TYPE_EQ_OVERFLOW: "EQ overflow",
               hw.AEQE_TYPE_CQE_ERROR: "CQE error"}


@record(frozen=True)
class QmCaps:
    version: int
    sq_depth: int
    cq_depth: int
    eq_depth: int
    aeq_depth: int
    eq_vector: int | None
    aeq_vector: int | None
    func_caps: int
    db_isolation: bool
    cap_ver: int = 0  # 0: the V3 defaults apply (no capability register was read)
    irq_num: int = hw.V2_VF_IRQ_NUM  # MSI vectors the function has

    @property
    def stop_qp(self) -> bool:
        return bool(self.func_caps & hw.QM_CAP_STOP_QP)


def _align(n: int, a: int = hw.XQC_ALIGN) -> int:
    return -(-n // a) * a


class QmDevice:
    """A QM function brought up over a `Device`. Hands out started `QmQueue`s. Plugin shape:
    `probe(dev)`, the constructor (bring-up), `remove()` (= `close()`, also run when the device
    closes)."""

    MAILBOX_TIMEOUT_S = 0.5  # trapped registers are slow on an emulated device

    @staticmethod
    def probe(dev: Device, accel: hw.QmAccelerator) -> bool:
        """A virtual function of `accel` (the only kind this driver brings up)."""
        return dev.vendor_id == accel.vendor_id and dev.device_id == accel.vf_device_id

    def __init__(self, dev: Device, accel: hw.QmAccelerator, *, doorbell: str = "mmap",
                 interrupts: bool = True) -> None:
        if doorbell not in ("mmap", "message"):
            raise InvalidArgumentError(f"doorbell must be 'mmap' or 'message', not {doorbell!r}")
        self.dev = dev
        self.accel = accel
        self.name = dev.name
        self.backend = dev.backend
        vendor, device = dev.vendor_id, dev.device_id
        if vendor != accel.vendor_id or device not in accel.device_ids:
            raise UnsupportedError(
                f"{dev.name} is {vendor:04x}:{device:04x}, not a HiSilicon {accel.name} function "
                f"({accel.vendor_id:04x}:{accel.vf_device_id:04x})")
        if device == accel.pf_device_id:
            raise UnsupportedError(
                f"{dev.name} is a {accel.name} physical function; warpdrive brings up virtual "
                "functions only (the PF needs memory init, VFT programming and engine setup)",
                hint="create VFs with the kernel driver (echo N > /sys/bus/pci/devices/<PF>/"
                "sriov_numvfs) and bind a VF to vfio-pci")
        self._lock = threading.Lock()
        # Starting queues, one at a time: a queue number is taken when the queue is registered,
        # after its mailboxes, so two lanes starting at once (a compress and a decompress
        # thread) would otherwise both take the first free one.
        self._starting = threading.Lock()
        self._events = threading.Lock()  # EQ/AEQ heads: any waiter's thread may service them
        self._sleepers = WakeGate()  # every queue's waiters sleep on the one EQ interrupt
        self._queues: dict[int, tuple[QmQueue, DmaBuffer]] = {}
        self.faults: dict[int, str] = {}  # queue -> what the device reported (AEQ)
        self.eq_overflows = 0
        self._block: DmaBuffer | None = None
        self._irqs: list[Interrupt] = []
        self._closed = False
        self.doorbell_mode = doorbell
        try:
            self._bring_up(doorbell, interrupts)
        except BaseException:
            self._teardown(reset=True)
            raise
        dev.on_close(self.close)

    # -- bring-up ---------------------------------------------------------------------------
    def _bring_up(self, doorbell: str, interrupts: bool) -> None:
        dev = self.dev
        dev.enable_bus_master()
        self.bar: Mmio = dev.map_bar(hw.QM_BAR, trap_only=doorbell == "message")
        if dev.revision < hw.QM_HW_V2:
            raise UnsupportedError(f"{dev.name} is QM V1 (revision {dev.revision:#x}); "
                                   "only V2 and later are supported")
        self.caps = self._read_caps(dev.revision)
        # SQ/CQ doorbells: one register in BAR2 for every queue, or with doorbell isolation
        # (V3) a 64 KiB page per queue in BAR4 (qm.c: qm_get_pci_res, qm_db_v2).
        if self.caps.db_isolation:
            self.db_bar = dev.map_bar(hw.QM_DB_BAR, trap_only=doorbell == "message")
            self.db_interval = hw.QM_QP_DB_INTERVAL
        else:
            self.db_bar = self.bar
            self.db_interval = 0
        # EQ/AEQ doorbells are posted (no reply awaited on vfio-user; a syscall on VFIO either
        # way): a waiter acknowledges events on every interrupt, and a reply would cost it a
        # round trip through the device's loop. Nothing depends on it landing first: the device
        # sends a queue's next EQE when the acknowledgement arrives, at once if the queue
        # completed jobs meanwhile (docs/research/hisi-qm-zip.md §7: one pending EQE per queue).
        self.eq_db = self.bar.doorbell(hw.QM_DOORBELL_EQ_AEQ_BASE_V2, posted=True)

        self.mailbox(hw.QM_MB_CMD_SQC_VFT_V2, 0, 0, op=1)
        vft = self.bar.read32(hw.QM_MB_CMD_DATA_ADDR_L) | \
            self.bar.read32(hw.QM_MB_CMD_DATA_ADDR_H) << 32
        self.qp_base, self.qp_num = hw.vft_decode_v2(vft)
        if self.qp_num < 1:
            raise DeviceError(f"{dev.name} has no queues assigned (VFT {vft:#x})",
                              hint="the PF driver assigns VF queues; check its vfs_num/pf_q_num")

        # One block: EQE ring, AEQE ring, SQC table, CQC table, mailbox scratch (32-B aligned).
        c = self.caps
        self.eq_off = 0
        self.aeq_off = _align(c.eq_depth * hw.EQE_SIZE)
        self.sqc_off = self.aeq_off + _align(c.aeq_depth * hw.AEQE_SIZE)
        self.cqc_off = self.sqc_off + self.qp_num * hw.XQC_SIZE
        self.scratch_off = self.cqc_off + self.qp_num * hw.XQC_SIZE
        self._block = dev.dma.alloc(self.scratch_off + hw.XQC_SIZE)
        blk = self._block
        blk.view[:] = bytes(blk.size)
        dev.dma.hold(blk, self, f"QM context tables of {dev.name}")
        iova = self._iova(blk)

        self._load_eq()
        self.mailbox_ctx(hw.QM_MB_CMD_AEQC, 0, hw.EQC.pack(
            0, 0, (iova + self.aeq_off) & 0xFFFF_FFFF, (iova + self.aeq_off) >> 32,
            0, 0, 0, (c.aeq_depth - 1) | hw.EQC_DW6_PHASE))
        self.aeq_head, self.aeq_phase = 0, 1
        self.mailbox(hw.QM_MB_CMD_SQC_BT, 0, iova + self.sqc_off)
        self.mailbox(hw.QM_MB_CMD_CQC_BT, 0, iova + self.cqc_off)

        if interrupts:
            self._enable_interrupts()
        if self.caps.version >= hw.QM_HW_V3:
            self.bar.write32(hw.QM_VF_STATE, hw.QM_VF_STATE_READY)  # qm.c: hisi_qm_set_state

    def _load_eq(self) -> None:
        """(Re)load the EQ context: an empty ring, head 0, phase 1 (as hisi_qm_start does)."""
        assert self._block is not None
        c, iova = self.caps, self._iova(self._block)
        size = c.eq_depth * hw.EQE_SIZE
        self._block.view[self.eq_off:self.eq_off + size] = bytes(size)
        self.mailbox_ctx(hw.QM_MB_CMD_EQC, 0, hw.EQC.pack(
            0, 0, (iova + self.eq_off) & 0xFFFF_FFFF, (iova + self.eq_off) >> 32,
            0, 0, 0, (c.eq_depth - 1) | hw.EQC_DW6_PHASE))
        self.eq_head, self.eq_phase = 0, 1

    def _read_caps(self, revision: int) -> QmCaps:
        """As hisi_qm does (qm.c: qm_get_hw_caps, hisi_qm_get_hw_info): V2 has no capability
        registers; V3 always reads the doorbell-isolation bit and the capability version, and
        reads the other registers only when that version is non-zero."""
        cap_ver, iso = 0, False
        if revision >= hw.QM_HW_V3:
            iso = bool(self.bar.read32(hw.QM_QUE_ISO_CFG_V) & 1)
            cap_ver = self.bar.read32(hw.QM_FUNC_CAPS_REG) & hw.QM_CAP_VER_MASK
        rd = self.bar.read32 if cap_ver else None
        xeq, qp = hw.CAP_XEQ_DEPTH.value(revision, rd), hw.CAP_QP_DEPTH.value(revision, rd)

        def vec(cap: hw.CapField) -> int | None:
            v = cap.value(revision, rd)  # bits 31:16 non-zero: the interrupt exists
            return v & 0xFFFF if v >> 16 else None

        caps = QmCaps(version=revision, sq_depth=qp & 0xFFFF, cq_depth=qp >> 16,
                      eq_depth=xeq & 0xFFFF, aeq_depth=xeq >> 16, eq_vector=vec(hw.CAP_EQ_IRQ),
                      aeq_vector=vec(hw.CAP_AEQ_IRQ), func_caps=hw.CAP_FUNC.value(revision, rd),
                      db_isolation=iso, cap_ver=cap_ver,
                      irq_num=hw.CAP_VF_IRQ_NUM.value(revision, rd))
        for what, d in (("SQ", caps.sq_depth), ("CQ", caps.cq_depth), ("EQ", caps.eq_depth),
                        ("AEQ", caps.aeq_depth)):
            if not 2 <= d <= 0x10000:
                raise DeviceError(f"{self.name} reports an {what} depth of {d}",
                                  hint="the capability registers look wrong; reset the device")
        return caps

    def _enable_interrupts(self) -> None:
        dev = self.dev
        try:
            info = dev.irq_info(VFIO_PCI_MSI_IRQ_INDEX)
        except WarpdriveError:
            return
        # Only the EQ (completions) and AEQ (queue errors) vectors are used; the PF->VF message
        # vector (V3) carries nothing a user-space driver acts on.
        wanted = max(v for v in (self.caps.eq_vector, self.caps.aeq_vector, 0)
                     if v is not None) + 1
        if info.count < wanted or wanted > self.caps.irq_num:
            return  # polling only
        self._irqs = dev.enable_irqs(VFIO_PCI_MSI_IRQ_INDEX, wanted)
        self.eq_db.ring(hw.doorbell_v2(0, hw.QM_DB_CMD_AEQ, 0))
        self.eq_db.ring(hw.doorbell_v2(0, hw.QM_DB_CMD_EQ, 0))
        self.bar.write32(hw.QM_VF_EQ_INT_MASK, 0)
        self.bar.write32(hw.QM_VF_AEQ_INT_MASK, 0)

    @staticmethod
    def _iova(buf: DmaBuffer) -> int:
        if buf.iova is None:
            raise DeviceError("DMA buffer is not mapped")
        return buf.iova

    @property
    def version(self) -> int:
        return self.caps.version

    @property
    def dma(self) -> DmaSpace:
        return self.dev.dma

    # -- mailbox ----------------------------------------------------------------------------
    def _mb_wait(self, what: str) -> int:
        deadline = time.monotonic() + self.MAILBOX_TIMEOUT_S
        while True:
            w = self.bar.read32(hw.QM_MB_CMD_SEND_BASE)
            if not w & hw.QM_MB_BUSY:
                return w
            if time.monotonic() > deadline:
                raise DeviceTimeoutError(
                    f"QM mailbox of {self.name} stayed busy for {self.MAILBOX_TIMEOUT_S} s "
                    f"({what})", hint="the function is wedged; reset it (close and reopen)")
            time.sleep(hw.MB_POLL_INTERVAL_S)

    def mailbox(self, cmd: int, queue: int, base: int, op: int = 0,
                ctx: bytes | None = None) -> None:
        """One mailbox command (with `ctx`: written into the scratch buffer first, under the
        same lock, since any thread may start a queue or reload the EQ). arm64 Linux issues
        one 128-bit store; Python has none, so this makes the four ascending 32-bit stores
        Linux makes everywhere else (the busy dword first; the command runs on the last)."""
        name = hw.MB_CMD_NAMES.get(cmd, f"cmd {cmd:#x}")
        what = f"mailbox {name} queue {queue}" + (" (read)" if op else "")
        with self._lock:
            self._mb_wait(what)
            if ctx is not None:
                assert self._block is not None
                self._block.view[self.scratch_off:self.scratch_off + len(ctx)] = ctx
            for i, word in enumerate(hw.mailbox_dwords(cmd, queue, base, op)):
                self.bar.write32(hw.QM_MB_CMD_SEND_BASE + 4 * i, word)
            w = self._mb_wait(what)
        status = w >> hw.QM_MB_STATUS_SHIFT & hw.QM_MB_STATUS_MASK
        if status:
            raise DeviceError(f"{what} on {self.name} failed with status {status}",
                              hint="the context was rejected (bad depth, size or address)")

    def mailbox_ctx(self, cmd: int, queue: int, ctx: bytes) -> None:
        """Write a 32-byte context through the scratch buffer."""
        assert self._block is not None
        self.mailbox(cmd, queue, self._iova(self._block) + self.scratch_off, ctx=ctx)

    def read_ctx(self, cmd: int, queue: int) -> bytes:
        """Read a context back (op = 1)."""
        assert self._block is not None
        self.mailbox(cmd, queue, self._iova(self._block) + self.scratch_off, op=1)
        return bytes(self._block.view[self.scratch_off:self.scratch_off + hw.XQC_SIZE])

    # -- queues -----------------------------------------------------------------------------
    def start_queue(self, qc_type: int, *, depth: int | None = None, irq: bool = False,
                    qn: int | None = None, priority: int = 0) -> QmQueue:
        """Allocate and start a queue of alg type `qc_type` (ZIP: 0 compress, 1 decompress)."""
        with self._starting:
            return self._start_queue(qc_type, depth, irq, qn, priority)

    def _start_queue(self, qc_type: int, depth: int | None, irq: bool, qn: int | None,
                     priority: int) -> QmQueue:
        if self._closed:
            raise DeviceError(f"QM of {self.name} is closed")
        if qn is None:
            free = [i for i in range(self.qp_num) if i not in self._queues]
            if not free:
                raise DeviceBusyError(f"all {self.qp_num} queues of {self.name} are in use",
                                      hint="close a session first")
            qn = free[0]
        elif qn in self._queues or not 0 <= qn < self.qp_num:
            raise InvalidArgumentError(f"queue {qn} of {self.name} is in use or out of range")
        sq_depth = min(depth or self.caps.sq_depth, self.caps.sq_depth)
        cq_depth = min(depth or self.caps.cq_depth, self.caps.cq_depth)
        layout = hw.QueueLayout(sq_depth, cq_depth, self.accel.sqe_size,
                                self.dev.dma.page_size)
        mem = self.dev.dma.alloc(layout.size)
        try:
            mem.view[:] = bytes(mem.size)
            self.dev.dma.hold(mem, self, f"queue {qn} of {self.name}")
            base = self._iova(mem)
            sq_iova, cq_iova = base + layout.sq_offset, base + layout.cq_offset
            w13 = (priority & hw.SQC_W13_PRIORITY_MASK) | 1 << hw.SQC_W13_ORDERS_SHIFT \
                | qc_type << hw.SQC_W13_ALG_SHIFT
            sqc = hw.SQC.pack(0, 0, sq_iova & 0xFFFF_FFFF, sq_iova >> 32,
                              (sq_depth - 1) | (self.accel.sqe_size.bit_length() - 1)
                              << hw.SQC_SQE_SIZE_SHIFT, 0, 0, 0, 0, qn, w13, 0)
            dw6 = hw.CQC_DW6_PHASE | (hw.CQC_DW6_IRQ if irq and self._irqs else 0)
            cqc = hw.CQC.pack(0, 0, cq_iova & 0xFFFF_FFFF, cq_iova >> 32,
                              (cq_depth - 1) | 4 << hw.CQC_CQE_SIZE_SHIFT, 0, 0, 0, 0, dw6, 0)
            self.mailbox_ctx(hw.QM_MB_CMD_SQC, qn, sqc)
            self.mailbox_ctx(hw.QM_MB_CMD_CQC, qn, cqc)
            db = self.db_bar.doorbell(qn * self.db_interval + hw.QM_DOORBELL_SQ_CQ_BASE_V2)
            irq_q = bool(dw6 & hw.CQC_DW6_IRQ)
            q = QmQueue(name=f"{self.name}/q{qn}", qn=qn, mem=mem.view, layout=layout,
                        doorbell=db, db_version=2, irq=irq_q, lazy_cq=not irq_q)
            q.watchdog = lambda: self._watch(q)
            self.faults.pop(qn, None)
        except BaseException:
            self.dev.dma.release(mem, self)
            self.dev.dma.unmap(mem)
            mem.close()
            raise
        self._queues[qn] = (q, mem)
        return q

    @property
    def interrupt(self) -> Interrupt | None:
        """The EQ (completion) interrupt, if MSI is enabled."""
        v = self.caps.eq_vector
        return self._irqs[v] if self._irqs and v is not None else None

    def _watch(self, q: QmQueue) -> None:
        """A waiter's refresh tick on `q`: the device is alive (`Device.watchdog`), AEQEs are
        serviced, and so are EQEs once they fill half the EQ (two loads when neither holds:
        the EQ's usual consumer is a waiter waking from the interrupt, and acknowledging on
        every tick would let the function post an EQE and an MSI per job to spinning
        waiters), and a queue the device stopped says why."""
        self.dev.watchdog()
        with self._events:
            blk = self._block
            if blk is not None and not self._closed:
                view, half = blk.view, self.caps.eq_depth // 2
                i, phase = self.eq_head + half, self.eq_phase  # EQEs are written in ring order
                if i >= self.caps.eq_depth:
                    i, phase = i - self.caps.eq_depth, phase ^ 1
                if self._ready(view, self.aeq_off, self.aeq_head, self.aeq_phase) or \
                        self._ready(view, self.eq_off, i, phase):
                    self._service(view)
        if q.stopped:
            why = self.faults.get(q.qn)
            if why is not None:
                raise QueueStoppedError(f"queue {q.name} was stopped by the device: {why}",
                                        hint="close the engine or session and open a new one")

    @staticmethod
    def _ready(view: memoryview, off: int, head: int, phase: int) -> bool:
        """Is the EQE/AEQE at `head` of the ring at `off` valid (its phase bit)?"""
        return bool((view[off + head * 4 + 2] & 1) == phase)

    def ack_events(self) -> int:
        """Service the AEQ (see the module docstring), then drain the EQ and ring its
        doorbell; returns how many EQEs were consumed. Nothing once the function closes: the
        close holds `_events` while it marks itself closed, so none of this runs on a function
        being reset or on memory being freed."""
        with self._events:
            blk = self._block
            return 0 if blk is None or self._closed else self._service(blk.view)

    def _service(self, view: memoryview) -> int:
        """`ack_events` (holds `_events`)."""
        if self._ready(view, self.aeq_off, self.aeq_head, self.aeq_phase) and \
                self._service_aeq(view):
            return 0
        n = 0
        depth = self.caps.eq_depth
        while self._ready(view, self.eq_off, self.eq_head, self.eq_phase):
            n += 1
            self.eq_head += 1
            if self.eq_head == depth:
                self.eq_head, self.eq_phase = 0, self.eq_phase ^ 1
        if n:
            self.eq_db.ring(hw.doorbell_v2(0, hw.QM_DB_CMD_EQ, self.eq_head))
        return n

    def _service_aeq(self, view: memoryview) -> bool:
        """Take every AEQE waiting and acknowledge them. A CQE error or CQ overflow stops the
        queue it names; an EQ overflow reloads the EQ (returns True then: its entries are
        gone). Holds `_events`."""
        overflow = False
        depth = self.caps.aeq_depth
        while self._ready(view, self.aeq_off, self.aeq_head, self.aeq_phase):
            (w,) = struct.unpack_from("<I", view, self.aeq_off + self.aeq_head * hw.AEQE_SIZE)
            kind, qn = w >> hw.AEQE_TYPE_SHIFT & 0xF, w & 0xFFFF
            what = _AEQE_NAMES.get(kind, f"unknown event type {kind}")
            self.aeq_head += 1
            if self.aeq_head == depth:
                self.aeq_head, self.aeq_phase = 0, self.aeq_phase ^ 1
            if kind == hw.AEQE_TYPE_EQ_OVERFLOW:
                overflow = True
                continue
            entry = self._queues.get(qn)
            log.warning("%s: the device reports %s on queue %d%s", self.name, what, qn,
                        "; the queue is stopped" if entry else " (not a queue in use)")
            if entry is not None and kind in _AEQE_NAMES:
                self.faults[qn] = what
                entry[0].set_stopped()
        self.eq_db.ring(hw.doorbell_v2(0, hw.QM_DB_CMD_AEQ, self.aeq_head))
        if overflow:
            self.eq_overflows += 1
            log.warning("%s: the device reports an EQ overflow (events were lost); the event "
                        "queue is reloaded, the queues go on", self.name)
            masked = not self._irqs
            if not masked:
                self.bar.write32(hw.QM_VF_EQ_INT_MASK, 1)
            self._load_eq()
            self.eq_db.ring(hw.doorbell_v2(0, hw.QM_DB_CMD_EQ, 0))
            if not masked:
                self.bar.write32(hw.QM_VF_EQ_INT_MASK, 0)
        return overflow

    def wakeups(self, q: QmQueue) -> int:
        """EQ interrupts taken so far (by any queue's waiter): read before the last look at
        `q`'s CQ, for `block` (`WakeGate`)."""
        return self._sleepers.wakeups

    def wait_interrupt(self, timeout: float, seen: int | None = None) -> None:
        """Block until the EQ interrupt fires (or `timeout`), or return at once if one was
        taken since `seen` (`wakeups`); whoever read the interrupt acknowledges events. One
        thread at a time reads it, and a read wakes every other sleeper (`WakeGate`): they
        share the vector, and a read empties its eventfd."""
        irq = self.interrupt
        if irq is None:
            time.sleep(min(timeout, 1e-3))
            return
        if self._sleepers.block(irq.wait, min(timeout, 0.05), seen):
            self.ack_events()

    # A sleep's bound while another queue of the function has jobs in flight and the queues'
    # doorbells are one mapped register: a device that samples it (the bundled model's polled
    # word) sees only the latest store, so another queue's CQ doorbell can hide the SQ doorbell
    # this waiter stored before sleeping, and its job waits for the re-store its wait makes on
    # waking (`Lane._wait`). Bounded here, that costs ~5 ms, not the 50 ms sleep (two threads,
    # default model: 4 of 30 runs had such a stall). One busy queue sleeps as before.
    SHARED_DOORBELL_SLEEP_S = 5e-3

    def block(self, q: QmQueue, remaining: float, seen: int | None = None) -> None:
        """How a waiter sleeps once it stops spinning: on the EQ interrupt when the queue has
        completion interrupts (`seen`: see `wait_interrupt`), else a short sleep."""
        if self._irqs:
            bound = 0.05
            if q.mapped and self.db_interval == 0 and any(
                    other is not q and other.outstanding
                    for other, _ in list(self._queues.values())):
                bound = self.SHARED_DOORBELL_SLEEP_S
            self.wait_interrupt(min(remaining, bound), seen)
        else:
            time.sleep(50e-6)

    def stop_queue(self, q: QmQueue, timeout: float = 2.0) -> None:
        """Drain and stop one queue, then free its memory."""
        entry = self._queues.pop(q.qn, None)
        if entry is None:
            return
        _, mem = entry
        err: BaseException | None = None
        if q.qn in self.faults:
            q.wedged = True  # the device stopped it: its jobs never complete; reset on close
        if not q.wedged:
            try:
                q.drain(timeout)
            except ConnectionLostError:
                # The device (a vfio-user server) is gone, and its jobs with it: nothing to
                # drain or stop; the memory goes with the rest in close().
                q.wedged = True
                self._queues[q.qn] = entry
                return
            except WarpdriveError as e:
                err = e
                q.wedged = True  # do not wait again: only the reset in close() can help
        q.set_stopped()
        try:
            if self.caps.stop_qp:
                self.mailbox(hw.QM_MB_CMD_STOP_QP, q.qn, 0)
        except ConnectionLostError:
            self._queues[q.qn] = entry  # gone with the device (see above)
            return
        except WarpdriveError as e:
            err = err or e
        if err is not None or q.wedged:
            # Jobs may still be in flight: only a reset makes freeing their memory safe.
            self._queues[q.qn] = entry
            if err is not None:
                raise err
            return
        q.release()
        self.dev.dma.release(mem, self)
        if not self.dev.closed:
            self.dev.dma.unmap(mem)
        mem.close()

    # -- close ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every queue, mask interrupts and reset the function (no DMA in flight), then
        free the memory. Runs from `Device.close()` too (registered with `on_close`)."""
        if self._closed:
            return
        errors: list[BaseException] = []
        for q, _mem in list(self._queues.values()):
            try:
                self.stop_queue(q)
            except WarpdriveError as e:
                errors.append(e)
        self._teardown(reset=True)
        if errors:
            raise errors[0]

    def _teardown(self, reset: bool) -> None:
        with self._events:  # a waiter servicing the EQ/AEQ finishes; later ones see it closed
            self._closed = True
        dev = self.dev
        if dev.closed:
            return
        writes = [lambda: self.bar.write32(hw.QM_VF_EQ_INT_MASK, 1),
                  lambda: self.bar.write32(hw.QM_VF_AEQ_INT_MASK, 1)]
        if getattr(self, "caps", None) is not None and self.caps.version >= hw.QM_HW_V3:
            writes.append(lambda: self.bar.write32(hw.QM_VF_STATE, hw.QM_VF_STATE_NOT_READY))
        for write in writes:
            try:
                write()
            except (WarpdriveError, AttributeError):
                pass
        if reset and dev.reset_supported:
            try:
                dev.reset()  # FLR: the function forgets every context and stops all DMA
            except WarpdriveError:
                pass
        for q, mem in self._queues.values():
            q.set_stopped()
            q.release()
            dev.dma.release(mem, self)
            try:
                dev.dma.unmap(mem)
                mem.close()
            except WarpdriveError:
                pass
        self._queues.clear()
        if self._block is not None:
            dev.dma.release(self._block, self)
            try:
                dev.dma.unmap(self._block)
                self._block.close()
            except WarpdriveError:
                pass
            self._block = None
        if self._irqs:
            try:
                dev.disable_irqs(VFIO_PCI_MSI_IRQ_INDEX)
            except WarpdriveError:
                pass
            self._irqs = []

    def remove(self) -> None:
        self.close()

    @property
    def queues(self) -> list[QmQueue]:
        return [q for q, _ in self._queues.values()]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._queues)} queue(s)"
        return f"<QmDevice {self.name} v{self.caps.version:#x} qps={self.qp_num} {state}>"
