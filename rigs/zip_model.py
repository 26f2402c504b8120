"""The ZIP model's device side driven without a client or a server: a stand-in for the driver
(`Client`) that plays it against a `QmFunction` through a memfd shared with the framework's real
`ClientMemory` (what the server hands the model), SQEs built with the driver's own `SqeTemplate`
(so both sides are checked against the one layout in `warpdrive.devices.zip.hw`), and
`model_client`, the same stand-in on a whole `ZipModel` hosted by a server `Function` in this
process. Used by tests/test_zip_model*.py and benchmarks/zip_model_pass.py."""

from __future__ import annotations

import logging
import mmap
import os
import struct

from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.sqe import Format, SqeTemplate
from warpdrive.emu.dma import ClientMemory
from warpdrive.emu.function import Function
from warpdrive.emu.models.zip import ZipModel, zip_function
from warpdrive.uapi import pci_regs

IOVA = 0x100000
SIZE = 4 << 20
# client memory layout (offsets from IOVA)
CTX = 0x0  # mailbox scratch context
SQC_T = 0x1000
CQC_T = 0x2000
EQ = 0x3000
AEQ = 0x5000
SQ = 0x10000  # 16 entries * 128
CQ = 0x20000
SRC = 0x100000
DST = 0x200000
STREAM_CTX = 0x300000
DEPTH = 16


class Client:
    """Plays the driver against a QmFunction through a memfd shared with ClientMemory."""

    def __init__(self, qm_kwargs: dict | None = None) -> None:
        fd = os.memfd_create("zip-model-test")
        os.ftruncate(fd, SIZE)
        self.mem = mmap.mmap(fd, SIZE)
        self.cm = ClientMemory()
        self.cm.add(IOVA, SIZE, fd, 0, True, True)
        os.close(fd)
        self.irqs: list[int] = []
        self.qm, self.jobs = zip_function(self.cm, notify=self._irq, **(qm_kwargs or {}))

    def _irq(self, vector: int) -> bool:
        self.irqs.append(vector)
        return True

    def w64(self, off: int, v: int) -> None:
        self.qm.write(off, struct.pack("<Q", v))

    def r32(self, off: int) -> int:
        return struct.unpack("<I", self.qm.read(off, 4))[0]

    def mailbox(self, cmd: int, queue: int = 0, base: int = 0, op: int = 0) -> int:
        for i, word in enumerate(qm.mailbox_dwords(cmd, queue, base, op)):
            self.qm.write(qm.QM_MB_CMD_SEND_BASE + 4 * i, struct.pack("<I", word))
        w = self.r32(qm.QM_MB_CMD_SEND_BASE)
        assert not w & qm.QM_MB_BUSY
        return w >> qm.QM_MB_STATUS_SHIFT & qm.QM_MB_STATUS_MASK

    def ctx(self, cmd: int, queue: int, data: bytes) -> int:
        self.mem[CTX:CTX + len(data)] = data
        return self.mailbox(cmd, queue, IOVA + CTX)

    def bring_up(self, alg_type: int = hw.ZIP_QC_COMPRESS, irq: bool = False) -> None:
        assert self.mailbox(qm.QM_MB_CMD_SQC_VFT_V2, op=1) == 0
        eq = IOVA + EQ
        assert self.ctx(qm.QM_MB_CMD_EQC, 0, qm.EQC.pack(0, 0, eq, 0, 0, 0, 0,
                                                         255 | qm.EQC_DW6_PHASE)) == 0
        assert self.mailbox(qm.QM_MB_CMD_SQC_BT, 0, IOVA + SQC_T) == 0
        assert self.mailbox(qm.QM_MB_CMD_CQC_BT, 0, IOVA + CQC_T) == 0
        self.start_queue(0, alg_type, irq)
        self.qm.write(qm.QM_VF_EQ_INT_MASK, struct.pack("<I", 0))

    def start_queue(self, qn: int, alg_type: int, irq: bool = False) -> None:
        sqc = qm.SQC.pack(0, 0, IOVA + SQ, 0, (DEPTH - 1) | 7 << 12, 0, 0, 0, 0, qn,
                          1 << 4 | alg_type << 8, 0)
        cqc = qm.CQC.pack(0, 0, IOVA + CQ, 0, (DEPTH - 1) | 4 << 12, 0, 0, 0, 0,
                          1 | (2 if irq else 0), 0)
        assert self.ctx(qm.QM_MB_CMD_SQC, qn, sqc) == 0
        assert self.ctx(qm.QM_MB_CMD_CQC, qn, cqc) == 0
        self.tail = 0
        self.cq_head = 0
        self.phase = 1

    def job(self, fmt: Format, data: bytes, avail: int = 1 << 20, **kw: object) -> tuple:
        """Submit one SQE, run the engine, return (consumed, produced, status, last, output)."""
        self.mem[SRC:SRC + len(data)] = data
        tmpl = SqeTemplate.for_format(fmt, qm.QM_HW_V2)
        off = SQ + self.tail * hw.SQE_SIZE
        kw.setdefault("src", IOVA + SRC)
        tmpl.fill(self.mem, off, in_len=len(data), dst=IOVA + DST, avail=avail,  # type: ignore
                  tag=0x1234 + self.tail, **kw)
        slot = self.tail
        self.tail = (self.tail + 1) % DEPTH
        self.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, self.tail))
        assert self.qm.process() == 1
        cqe = qm.CQE.unpack_from(self.mem, CQ + self.cq_head * 16)
        assert cqe[6] & 1 == self.phase and cqe[3] == slot  # phase, sq_head
        self.cq_head = (self.cq_head + 1) % DEPTH
        if self.cq_head == 0:
            self.phase ^= 1
        w = hw.SQE.unpack_from(self.mem, off)
        tag_dw = tmpl.tag_dw
        assert w[tag_dw] == 0x1234 + slot  # the tag survives the in-place write-back
        consumed, produced, st = w[0], w[1], w[3]
        return (consumed, produced, st & 0xFF, bool(st & hw.STATUS_LAST_BLOCK),
                bytes(self.mem[DST:DST + produced]), w)


def model_client(workers: str = "1") -> tuple[Client, ZipModel, Function]:
    """The driver stand-in (`Client`), on a ZipModel hosted by a server `Function` in this
    process (so the model's kept ring views are in play), with its memory mapped."""
    c = Client.__new__(Client)
    fd = os.memfd_create("zip-model-rig")
    os.ftruncate(fd, SIZE)
    c.mem = mmap.mmap(fd, SIZE)
    model = ZipModel(workers=workers)
    fn = Function(model, max_dma_maps=64, max_data_xfer_size=1 << 20,
                  logger=logging.getLogger("zip-model-rig"), label="rig")
    fn.dma.add(IOVA, SIZE, fd, 0, True, True)
    os.close(fd)
    fn.config.write(pci_regs.PCI_COMMAND, struct.pack(
        "<H", pci_regs.PCI_COMMAND_MEMORY | pci_regs.PCI_COMMAND_MASTER))
    assert model.qm is not None
    c.cm, c.qm, c.jobs, c.irqs = fn.dma, model.qm, model.jobs, []
    return c, model, fn
