"""A broker client's virtual function driven in this process, without a socket or a client
process (`FunctionRig`), and the SQEs it posts (`sqe_words`). Used by tests/test_serve_*.py (through
tests/brokerutil.py) and benchmarks/broker_bench.py (`--floor`, `--breakdown`)."""

from __future__ import annotations

import os
import struct
from typing import Any

from warpdrive.devices.zip import hw
from warpdrive.serve.broker import Broker

SQE = struct.Struct("<32I")


def addr_words(iova: int) -> tuple[int, int]:
    return iova & 0xFFFF_FFFF, iova >> 32


def sqe_words(src: int, dst: int, *, alg: int = hw.ALG_ZLIB, **dw: int) -> list[int]:
    """A good stateless SQE (4 KiB in, 8 KiB of room) as 32 dwords; `dwN=value` overrides."""
    w = [0] * 32
    w[hw.DW_IN_SGE_FLAGS] = hw.sqe_dw7(finish=True, stateful=False, new_stream=True,
                                       sqe_type=hw.SQE_TYPE_V3)
    w[hw.DW_REQ] = hw.sqe_dw9(alg)
    w[hw.DW_INPUT_LENGTH] = 4096
    w[hw.DW_DEST_AVAIL_OUT] = 8192
    w[hw.DW_SRC_L], w[hw.DW_SRC_H] = addr_words(src)
    w[hw.DW_DST_L], w[hw.DW_DST_H] = addr_words(dst)
    for k, v in dw.items():
        w[int(k[2:])] = v
    return w


class FunctionRig:
    """One client's virtual function in this process: `VirtualZip` in a server `Function`, its
    rings in a sealed memfd it "mapped", on a broker whose device is the bundled model in its
    own process (the null executor by default: every job done at once; `executor="zlib"` does
    them). No socket, no client
    process: the test (or `benchmarks/broker_bench.py --floor`) plays the client's driver,
    writing SQEs into the ring and storing the doorbell word, and the server's pass is
    `poll()`. Queue 0 compresses; with `irq` its CQC asks for completion interrupts."""

    IOVA, SIZE = 0x100000, 4 << 20
    CTX, SQC_T, CQC_T, EQ, SQ, CQ, SRC, DST = (0, 0x1000, 0x2000, 0x3000, 0x10000, 0x40000,
                                               0x100000, 0x200000)
    EQ_DEPTH = 256

    def __init__(self, model_options: dict[str, str] | None = None, *, depth: int = 1024,
                 irq: bool = False, inflight: int = 256, executor: str = "null",
                 **broker_opts: Any) -> None:
        import fcntl
        import logging
        import mmap

        from warpdrive.backends.vfiouser.launcher import open_emulated
        from warpdrive.devices.hisi_qm import regs as qm
        from warpdrive.emu.function import Function
        from warpdrive.serve.function import VirtualZip
        from warpdrive.uapi import pci_regs

        self.qm, self.depth = qm, depth
        dev = open_emulated("zip", model_options={"queues": "16", "isolation": "1",
                                                  **(model_options or {}), "executor": executor})
        self.broker = Broker(dev, max_inflight=inflight, **broker_opts)
        self.model = VirtualZip(self.broker.client("rig"), revision=self.broker.revision,
                                depth=depth)
        self.fn = Function(self.model, max_dma_maps=64, max_data_xfer_size=1 << 20,
                           logger=logging.getLogger("rig"), label="rig")
        fd = os.memfd_create("rig", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, self.SIZE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        self.mem = mmap.mmap(fd, self.SIZE)
        self.fn.dma.add(self.IOVA, self.SIZE, fd, 0, True, True)
        self.model.on_dma_map(self.IOVA, self.SIZE, fd, 0, True, True)
        os.close(fd)
        self.fn.config.write(pci_regs.PCI_COMMAND, struct.pack(
            "<H", pci_regs.PCI_COMMAND_MEMORY | pci_regs.PCI_COMMAND_MASTER))
        iova = self.IOVA
        self.mailbox(qm.QM_MB_CMD_SQC_BT, 0, iova + self.SQC_T)
        self.mailbox(qm.QM_MB_CMD_CQC_BT, 0, iova + self.CQC_T)
        self.context(qm.QM_MB_CMD_EQC, 0, qm.EQC.pack(0, 0, iova + self.EQ, 0, 0, 0, 0,
                                                      (self.EQ_DEPTH - 1) | qm.EQC_DW6_PHASE))
        self.context(qm.QM_MB_CMD_SQC, 0, qm.SQC.pack(0, 0, iova + self.SQ, 0,
                                                      (depth - 1) | 7 << 12, 0, 0, 0, 0, 0,
                                                      1 << 4, 0))
        self.context(qm.QM_MB_CMD_CQC, 0, qm.CQC.pack(0, 0, iova + self.CQ, 0,
                                                      (depth - 1) | 4 << 12, 0, 0, 0, 0,
                                                      1 | (qm.CQC_DW6_IRQ if irq else 0), 0))
        self.template = SQE.pack(*sqe_words(iova + self.SRC, iova + self.DST))
        self.bell = self.model._bells[0][0]  # the doorbell word the client stores into
        self.tail = self.head = 0
        self.phase = 1

    def mailbox(self, cmd: int, queue: int = 0, base: int = 0, op: int = 0) -> None:
        f = self.model.qm
        assert f is not None
        for i, word in enumerate(self.qm.mailbox_dwords(cmd, queue, base, op)):
            f.write(self.qm.QM_MB_CMD_SEND_BASE + 4 * i, struct.pack("<I", word))

    def context(self, cmd: int, queue: int, data: bytes) -> None:
        self.mem[self.CTX:self.CTX + len(data)] = data
        self.mailbox(cmd, queue, self.IOVA + self.CTX)

    def write(self, batch: int, sqe: bytes | None = None) -> None:
        """`batch` SQEs (the good template unless `sqe`) at the tail; the doorbell is `ring`."""
        mem, sq, t = self.mem, self.SQ, self.tail
        for _ in range(batch):
            mem[sq + t * 128:sq + t * 128 + 128] = sqe or self.template
            t = (t + 1) % self.depth
        self.tail = t

    def ring(self, value: int | None = None) -> None:
        """Store the SQ doorbell for the tail (or any `value`) into the doorbell word."""
        self.bell.value = self.qm.doorbell_v2(0, self.qm.QM_DB_CMD_SQ, self.tail) \
            if value is None else value

    def poll(self) -> int:
        """One server pass: the function's poll, then the broker's."""
        took = self.fn.poll()
        return max(int(took) * 2, self.broker.poll())

    def reap(self, limit: int) -> int:
        """Consume up to `limit` CQEs the broker wrote; how many there were."""
        mem, cq, n = self.mem, self.CQ, 0
        while n < limit and mem[cq + self.head * 16 + 14] & 1 == self.phase:
            n += 1
            self.head = (self.head + 1) % self.depth
            if self.head == 0:
                self.phase ^= 1
        return n

    def ack(self) -> None:
        """The CQ doorbell after a batch (its store hides the SQ one: the driver's order)."""
        self.bell.value = self.qm.doorbell_v2(0, self.qm.QM_DB_CMD_CQ, self.head)

    def close(self) -> None:
        self.fn.close()
        self.broker.close()
        self.mem.close()
