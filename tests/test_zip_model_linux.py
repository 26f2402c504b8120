"""The ZIP model driven the way Linux 6.12's hisi_qm + hisi_zip drive a V3 virtual function, on
the host: the probe's register reads and mailbox sequence, the crypto self-test's jobs (hardware
SGLs, stateless, flush bit clear) and the EQ interrupt handler's rules. The lab runs the real
driver (tests/lab/test_lab_zip_witness.py); this replays what it does so a regression shows up
without a guest.

Every value comes from docs/research/hisi-qm-zip.md (section numbers below), written here as
plain numbers: neither the model's layout nor the driver's is used, so this is a third
transcription of the same facts. Client memory is scattered 4 KiB maps, as QEMU presents a
guest behind intel-iommu with caching mode."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from warpdrive.emu.dma import ClientMemory
from warpdrive.emu.models.zip import zip_function

PAGE = 4096
IOVA = 0xFFF0_0000  # what the guest's IOMMU hands out: high, contiguous
PAGES = 192
# IOVA layout (offsets)
SCRATCH = 0x0000  # qm->xqc_buf: one context at a time (§4)
EQE, AEQE = 0x1000, 0x3000  # 2048 x 4 B, 1024 x 4 B
SQC_T, CQC_T = 0x4000, 0x4100
QUEUE = (0x10000, 0x40000)  # per queue: SQ 1024 x 128 B, then CQ 1024 x 16 B (§5)
SGL = 0x80000  # SGL pool: 384 B per SGL with sgl_sge_nr 10 (§10)
DATA = 0x90000  # request buffers, 512 B each (COMP_BUF_SIZE, §12)
SQ_DEPTH = 1024


class Guest:
    """Guest memory behind an IOMMU: IOVA page i is guest page perm[i] of one memfd, each
    mapped to the device by its own 4 KiB DMA map."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, PAGES * PAGE)
        self.perm = [(i * 37 + 11) % PAGES for i in range(PAGES)]
        self.dma = ClientMemory()
        for i, page in enumerate(self.perm):
            self.dma.add(IOVA + i * PAGE, PAGE, self.fd, page * PAGE, True, True)

    def _io(self, off: int, n: int, data: bytes | None) -> bytes:
        out, pos = b"", 0
        while pos < n:
            page, at = divmod(off + pos, PAGE)
            k = min(n - pos, PAGE - at)
            where = self.perm[page] * PAGE + at
            if data is None:
                out += os.pread(self.fd, k, where)
            else:
                os.pwrite(self.fd, data[pos:pos + k], where)
            pos += k
        return out

    def write(self, off: int, data: bytes) -> None:
        self._io(off, len(data), data)

    def read(self, off: int, n: int) -> bytes:
        return self._io(off, n, None)

    def u32(self, off: int) -> int:
        return int(struct.unpack("<I", self.read(off, 4))[0])


class Linux:
    """hisi_qm/hisi_zip 6.12 on x86, reduced to what they do to the device."""

    def __init__(self, **model: object) -> None:
        self.mem = Guest()
        self.msis: list[int] = []
        self.qm, _ = zip_function(self.mem.dma, notify=self._msi, **model)  # type: ignore[arg-type]
        self.eq_head, self.eq_phase = 0, 1
        self.cq_head = [0, 0]
        self.cq_phase = [1, 1]
        self.sq_tail = [0, 0]
        self.tags: dict[int, tuple[int, int]] = {}  # tag -> (queue, output buffer)
        self.last_req = 0

    def _msi(self, vector: int) -> bool:
        self.msis.append(vector)
        return True

    # registers
    def rd(self, off: int) -> int:
        return int(struct.unpack("<I", self.qm.read(off, 4))[0])

    def wr(self, off: int, val: int) -> None:
        self.qm.write(off, struct.pack("<I", val))

    def wq(self, off: int, val: int) -> None:
        self.qm.write(off, struct.pack("<Q", val))

    def mb(self, cmd: int, queue: int = 0, base: int = 0, op: int = 0) -> int:
        """qm_mb_nolock: wait not busy, memcpy_toio = four ascending dwords (§4), wait, status."""
        assert not self.rd(0x300) & 1 << 13, "QM mailbox is busy to start!"
        w0 = cmd | 1 << 13 | op << 14
        for i, dw in enumerate(struct.unpack("<4I", struct.pack("<HHIII", w0, queue,
                                                                base & 0xFFFF_FFFF, base >> 32,
                                                                0))):
            self.wr(0x300 + 4 * i, dw)
        w = self.rd(0x300)
        assert not w & 1 << 13, "mailbox still busy"
        return w >> 9 & 0xF

    def ctx(self, cmd: int, queue: int, data: bytes) -> int:
        self.mem.write(SCRATCH, data)  # qm_set_and_get_xqc: through the scratch buffer
        return self.mb(cmd, queue, IOVA + SCRATCH)

    def probe(self) -> dict[str, int]:
        """§3 in probe order; returns what the driver learned."""
        got = {"iso": self.rd(0x30) & 1}
        caps = self.rd(0x3100)
        got["cap_ver"], got["features"] = caps & 0xFF, caps
        got["eq_irq"], got["aeq_irq"] = self.rd(0x310C), self.rd(0x3110)
        got["pf2vf_irq"] = self.rd(0x3118)
        assert self.mb(0x6, op=1) == 0  # SQC_VFT_V2
        vft = self.rd(0x304) | self.rd(0x308) << 32
        got["qp_base"], got["qp_num"] = vft >> 28 & 0xFFFF, (vft >> 45 & 0x3FF) + 1
        got["vectors"] = self.rd(0x311C) & 0xFFFF
        got["xeq"], got["qp_depth"] = self.rd(0x3104), self.rd(0x3108)
        if caps & 1 << 11:  # MB_COMMAND: qm_cmd_init
            self.wr(0x20, self.rd(0x20) | 1)
            self.wr(0x24, self.rd(0x24) & ~1)
        got["drv_alg"] = self.rd(0x3144)
        for reg in (0x313C, 0x3140, 0x3148):
            self.rd(reg)
        # hisi_qm_start: EQC, AEQC (§5), SQC_BT, CQC_BT, prefetch page type, doorbells, unmask
        assert self.ctx(0x2, 0, struct.pack("<HHIIIIII", 0, 0, (IOVA + EQE) & 0xFFFF_FFFF,
                                            (IOVA + EQE) >> 32, 0, 0, 0, 0x107FF)) == 0
        assert self.ctx(0x3, 0, struct.pack("<HHIIIIII", 0, 0, (IOVA + AEQE) & 0xFFFF_FFFF,
                                            (IOVA + AEQE) >> 32, 0, 0, 0, 0x103FF)) == 0
        assert self.mb(0x4, 0, IOVA + SQC_T) == 0
        assert self.mb(0x5, 0, IOVA + CQC_T) == 0
        if caps & 1 << 14:
            self.wr(0x34, 0)
        self.wq(0x2000, 3 << 12)  # AEQ doorbell, index 0
        self.wq(0x2000, 2 << 12)  # EQ doorbell, index 0
        self.wr(0x0C, 0)
        self.wr(0x04, 0)
        self.wr(0x60, 0)  # QM_VF_STATE ready
        return got

    def start_qp(self, qn: int, alg: int) -> None:
        """hisi_qm_start_qp: SQC then CQC through the scratch buffer (§5 values)."""
        sq = IOVA + QUEUE[qn]
        cq = sq + 128 * SQ_DEPTH
        sqc = struct.pack("<HHIIIHHHHHHI", 0, 0, sq & 0xFFFF_FFFF, sq >> 32, 0x73FF, 0, 0, 0, 0,
                          qn, 0x0010 | alg << 8, 0)
        cqc = struct.pack("<HHIIIHHHHII", 0, 0, cq & 0xFFFF_FFFF, cq >> 32, 0x43FF, 0, 0, 0, 0,
                          0x3, 0)
        assert self.ctx(0x0, qn, sqc) == 0
        assert self.ctx(0x1, qn, cqc) == 0

    def send(self, qn: int, src: bytes, dlen: int, window: int = 0) -> int:
        """hisi_zip_do_work: one-entry hardware SGLs for src and dst, the SQE of §10, the SQ
        doorbell. Returns the request's tag."""
        slot = self.sq_tail[qn]
        req = self.last_req = len(self.tags) % 32
        src_buf, dst_buf = DATA + req * 1024, DATA + req * 1024 + 512
        self.mem.write(src_buf, src)
        for k, (buf, n) in enumerate(((src_buf, len(src)), (dst_buf, dlen))):
            sgl = SGL + (req * 2 + k) * 384
            header = struct.pack("<QHHH", 0, 10, 1, 10).ljust(64, b"\0")
            entry = struct.pack("<QQI", IOVA + buf, 0xFFFF8880_12345000, n).ljust(32, b"\0")
            self.mem.write(sgl, header + entry + bytes(9 * 32))
        tag = 0xFFFF8880_00000000 | slot << 8 | qn
        sqe = [0] * 32
        sqe[4] = len(src)
        sqe[7] = 0x30000000  # sqe_type 3, flush/stream bits clear
        sqe[9] = 0x101 | window << 12  # deflate, hardware SGL (7.3 adds window 2)
        sqe[14] = dlen
        for dw, k in ((18, 0), (20, 1)):
            a = IOVA + SGL + (req * 2 + k) * 384
            sqe[dw], sqe[dw + 1] = a & 0xFFFF_FFFF, a >> 32
        sqe[26], sqe[27] = tag & 0xFFFF_FFFF, tag >> 32
        self.mem.write(QUEUE[qn] + slot * 128, struct.pack("<32I", *sqe))
        self.sq_tail[qn] = (slot + 1) % SQ_DEPTH
        self.tags[tag] = (qn, dst_buf)
        self.wq(0x1000, qn | 0 << 12 | self.sq_tail[qn] << 32)  # trapped SQ doorbell
        return tag

    def eq_irq(self) -> list[int]:
        """qm_get_complete_eqe_num: queue numbers of the valid EQEs, then the EQ doorbell."""
        cqns = []
        while True:
            eqe = self.mem.u32(EQE + self.eq_head * 4)
            if (eqe >> 16 & 1) != self.eq_phase:
                break
            cqns.append(eqe & 0xFFFF)
            self.eq_head += 1
            if self.eq_head == 2048:
                self.eq_head, self.eq_phase = 0, self.eq_phase ^ 1
        self.wq(0x2000, 2 << 12 | self.eq_head << 32)
        return cqns

    def poll_cq(self, qn: int) -> list[tuple[int, int, int, bytes]]:
        """qm_poll_req_cb + hisi_zip_acomp_cb: (tag, status, produced, output) per CQE, a CQ
        doorbell per CQE, then the priority-1 one ("set c_flag")."""
        out = []
        cq = QUEUE[qn] + 128 * SQ_DEPTH
        while True:
            cqe = self.mem.read(cq + self.cq_head[qn] * 16, 16)
            if (struct.unpack_from("<H", cqe, 14)[0] & 1) != self.cq_phase[qn]:
                break
            slot = struct.unpack_from("<H", cqe, 8)[0]
            sqe = struct.unpack("<32I", self.mem.read(QUEUE[qn] + slot * 128, 128))
            tag = sqe[26] | sqe[27] << 32
            _, dst_buf = self.tags.pop(tag)
            status, produced = sqe[3] & 0xFF, sqe[1]
            out.append((tag, status, produced, self.mem.read(dst_buf, produced)))
            self.cq_head[qn] += 1
            if self.cq_head[qn] == SQ_DEPTH:
                self.cq_head[qn], self.cq_phase[qn] = 0, self.cq_phase[qn] ^ 1
            self.wq(0x1000, qn | 1 << 12 | self.cq_head[qn] << 32)
        self.wq(0x1000, qn | 1 << 12 | self.cq_head[qn] << 32 | 1 << 48)
        return out

    def run(self) -> list[int]:
        """The device runs (the server's poll loop); returns the MSI vectors it raised."""
        self.msis.clear()
        while self.qm.process():
            pass
        return list(self.msis)


TEXT = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
        b"incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
        b"exercitation ullamco laboris nisi ut aliquip.")


def test_the_probe_finds_a_v3_function_that_registers_deflate() -> None:
    linux = Linux()
    got = linux.probe()
    assert got["cap_ver"] != 0  # so every capability below is read, not assumed
    assert got["iso"] == 0 and got["qp_num"] >= 2  # two queues per crypto tfm (§4)
    assert got["vectors"] == 3 and got["eq_irq"] == 0x10000 and got["aeq_irq"] == 0x10001
    assert got["pf2vf_irq"] >> 16 and got["pf2vf_irq"] & 0xFFFF == 2
    assert got["drv_alg"] & 0x30 == 0x30  # hisi_zip_register_deflate's condition (§9)
    assert got["xeq"] == 0x04000800 and got["qp_depth"] == 0x04000400
    assert got["features"] & 1 << 9  # STOP_QP
    assert [e[:2] for e in linux.qm.mb_log] == [(6, 1), (2, 0), (3, 0), (4, 0), (5, 0)]
    assert linux.rd(0x60) == 0


@pytest.mark.parametrize("window", [0, 2], ids=["6.12", "7.3-window"])
def test_the_crypto_self_test_jobs_pass(window: int) -> None:
    """crypto/testmgr.c test_acomp (§12): compress each vector into 512 bytes, decompress the
    device's own output, then decompress raw deflate made with window bits -11. Each request is
    a whole stateless job: success is status 0 (0x0d allowed for compression), `produced` the
    exact length."""
    linux = Linux()
    linux.probe()
    linux.start_qp(0, 0)  # compression queue
    linux.start_qp(1, 1)  # decompression queue
    for data in (TEXT[:70], TEXT[:191]):
        linux.send(0, data, 512, window)
        assert linux.run() == [0]
        assert linux.eq_irq() == [0]
        [(_, status, produced, comp)] = linux.poll_cq(0)
        assert status in (0, 0x0D) and produced == len(comp) and produced > 0
        linux.send(1, comp, 512, window)
        assert linux.run() == [0]
        assert linux.eq_irq() == [1]
        [(_, status, produced, out)] = linux.poll_cq(1)
        assert (status, out) == (0, data)
    for data in (TEXT[:191], TEXT[:70]):
        c = zlib.compressobj(9, zlib.DEFLATED, -11)
        comp = c.compress(data) + c.flush()
        linux.send(1, comp, 512, window)
        linux.run()
        linux.eq_irq()
        [(_, status, produced, out)] = linux.poll_cq(1)
        assert (status, produced, out) == (0, len(data), data)
    # tfm exit: the queues stop by mailbox (STOP_QP, §4)
    assert linux.mb(0x8, 0) == 0 and linux.mb(0x8, 1) == 0


def test_a_queue_never_has_two_eqes_pending() -> None:
    """The EQ handler stores one batch in an array of qp_num entries (§7): the model posts at
    most one EQE per queue until the driver consumes it, and signals again at once if the queue
    completed more jobs meanwhile, so no completion is left without an interrupt."""
    linux = Linux()
    linux.probe()
    linux.start_qp(0, 0)
    linux.start_qp(1, 1)
    for i in range(5):
        linux.send(0, TEXT[: 20 + i], 512)
    assert linux.run() == [0]  # five completions, one interrupt
    for i in range(3):
        linux.send(0, TEXT[: 30 + i], 512)
    assert linux.run() == []  # still pending: no second EQE for queue 0
    linux.send(1, zlib.compress(TEXT)[2:-4], 512)
    assert linux.run() == [0]  # queue 1 gets its own
    linux.msis.clear()
    assert linux.eq_irq() == [0, 1]  # two EQEs pending at the interrupt: one per queue
    # Consuming queue 0's EQE re-armed it, and it had completed three more jobs since: a new
    # EQE and MSI went out with the EQ doorbell itself.
    assert linux.msis == [0]
    done = linux.poll_cq(0)
    assert len(done) == 8 and all(s in (0, 0x0D) for _, s, _, _ in done)
    assert linux.eq_irq() == [0]  # the follow-up EQE; its CQ has nothing new: harmless
    assert linux.poll_cq(0) == [] and len(linux.poll_cq(1)) == 1


def test_with_latched_doorbells_the_priority_1_cq_doorbell_rearms() -> None:
    """With every doorbell store seen (doorbells=trap, the lab's setting) the model re-arms a
    queue as the function does (§7.1): on the CQ doorbell with priority 1 that Linux rings after
    draining the CQ ("set c_flag"), not on the EQ acknowledgement; at once if CQEs lie beyond
    the head it carries. Still one EQE per queue at a time, as the EQ handler needs."""
    linux = Linux()
    linux.qm.cq_rearm = True
    linux.probe()
    linux.start_qp(0, 0)
    for i in range(5):
        linux.send(0, TEXT[: 20 + i], 512)
    assert linux.run() == [0]  # five completions, one interrupt
    linux.send(0, TEXT[:30], 512)
    assert linux.run() == []  # not re-armed yet: no second EQE
    assert linux.eq_irq() == [0]
    assert linux.msis == []  # acknowledging the EQE re-arms nothing
    assert len(linux.poll_cq(0)) == 6  # ... its priority-1 doorbell does: nothing beyond it
    assert linux.msis == [] and linux.eq_irq() == []
    linux.send(0, TEXT[:31], 512)
    assert linux.run() == [0]  # armed: the next completion signals
    assert linux.eq_irq() == [0]
    # A CQE written after the driver's last look but before its re-arm is signalled at once.
    head = linux.cq_head[0]
    linux.send(0, TEXT[:32], 512)
    linux.run()
    linux.wq(0x1000, 0 | 1 << 12 | head << 32 | 1 << 48)
    assert linux.msis == [0] and linux.eq_irq() == [0]
    assert len(linux.poll_cq(0)) == 2


def test_bad_sgls_and_unmapped_buffers_fail_the_request_not_the_device() -> None:
    linux = Linux()
    linux.probe()
    linux.start_qp(0, 0)
    tag = linux.send(0, TEXT[:100], 512)
    # the destination SGL claims 300 entries (the kernel's pool holds at most 255 per SGL)
    linux.mem.write(SGL + (linux.last_req * 2 + 1) * 384 + 8, struct.pack("<HHH", 10, 300, 10))
    linux.run()
    linux.eq_irq()
    [(got, status, _, _)] = linux.poll_cq(0)
    assert got == tag and status not in (0, 0x0D)
    tag = linux.send(0, TEXT[:100], 512)
    linux.mem.write(SGL + linux.last_req * 2 * 384 + 64, struct.pack("<Q", 0xDEAD_0000))  # src
    linux.run()
    linux.eq_irq()
    [(got, status, _, _)] = linux.poll_cq(0)
    assert got == tag and status not in (0, 0x0D)
    linux.send(0, TEXT[:100], 512)  # and the queue goes on
    linux.run()
    linux.eq_irq()
    [(_, status, _, out)] = linux.poll_cq(0)
    assert status == 0 and zlib.decompress(out, -15) == TEXT[:100]


def test_linux_7_3_sends_no_mailbox_on_x86() -> None:
    """§14: 7.3's qm_mb_write is arm64-only: on x86 the mailbox registers are never written, so
    the model never runs a command and the driver reads back qp_num = 1 (no algorithm)."""
    linux = Linux()
    for reg in (0x30, 0x3100, 0x3104, 0x3108, 0x310C, 0x3110, 0x3114, 0x3118, 0x311C):
        linux.rd(reg)
    for reg in range(0x3124, 0x3160, 4):  # 7.3 reads the whole ZIP block
        linux.rd(reg)
    assert not linux.qm.mb_log
    assert linux.rd(0x3120) == 0  # EXT_BAR_INDEX: not offered
