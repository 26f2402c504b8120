"""The ZIP VF model's device side without a server: register file, mailbox, contexts, the queue
engine and job semantics. The driver's stand-in is `rigs.zip_model.Client`: client memory is the
framework's real `ClientMemory` over a real memfd (what the server hands the model); SQEs are
built with the driver's own `SqeTemplate`, so the two sides are checked against the one layout in
`warpdrive.devices.zip.hw`.

End-to-end behaviour over vfio-user (bring-up order, jobs through the driver) is in
test_zip_bringup.py and test_zip_roundtrip.py."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from rigs.zip_model import (
    AEQ,
    CTX,
    DEPTH,
    DST,
    EQ,
    IOVA,
    SQ,
    SQC_T,
    SRC,
    STREAM_CTX,
    Client,
)
from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.sqe import Format, SqeTemplate
from warpdrive.emu.models._qm import QmFunction
from warpdrive.emu.models.zip import DBG_MB_LOG_LEN, debug_window, decode_mailbox_log


def test_vft_caps_and_mailbox_status() -> None:
    c = Client({"qp_num": 3, "qp_base": 64})
    assert c.mailbox(qm.QM_MB_CMD_SQC_VFT_V2, op=1) == 0
    vft = c.r32(qm.QM_MB_CMD_DATA_ADDR_L) | c.r32(qm.QM_MB_CMD_DATA_ADDR_H) << 32
    assert qm.vft_decode_v2(vft) == (64, 3)
    assert c.r32(qm.QM_QP_DEPTH_CAP) == 0x04000400
    # An SQC before the table base is set, a queue out of range, an unknown command: status != 0
    assert c.ctx(qm.QM_MB_CMD_SQC, 0, bytes(32)) != 0
    assert c.mailbox(qm.QM_MB_CMD_SQC_BT, 0, IOVA + SQC_T) == 0
    assert c.ctx(qm.QM_MB_CMD_SQC, 5, bytes(32)) != 0
    assert c.mailbox(0xB) != 0
    # A context address outside the client's maps is a failed command, not a crash.
    assert c.mailbox(qm.QM_MB_CMD_EQC, 0, 0xDEAD0000) != 0
    assert [e[0] for e in c.qm.mb_log] == [qm.QM_MB_CMD_SQC_VFT_V2, qm.QM_MB_CMD_SQC,
                                           qm.QM_MB_CMD_SQC_BT, qm.QM_MB_CMD_SQC, 0xB,
                                           qm.QM_MB_CMD_EQC]


def test_contexts_are_written_back_and_read_back() -> None:
    c = Client()
    c.bring_up()
    sqc = bytes(c.mem[SQC_T:SQC_T + 32])
    assert qm.SQC.unpack(sqc)[2] == IOVA + SQ  # the model wrote the SQC into the table
    c.job(Format("deflate", 15), b"x" * 1000)
    assert c.mailbox(qm.QM_MB_CMD_SQC, 0, IOVA + CTX, op=1) == 0
    head, tail = struct.unpack_from("<HH", c.mem, CTX)
    assert head == tail == 1


@pytest.mark.parametrize("container,wbits", [("deflate", -15), ("zlib", 15), ("gzip", 31)])
def test_stateless_compress_and_decompress(container: str, wbits: int) -> None:
    c = Client()
    c.bring_up()
    data = b"The quick brown fox jumps over the lazy dog. " * 500
    fmt = Format(container, 15)
    consumed, _, st, last, body, w = c.job(fmt, data)
    assert (consumed, st, last) == (len(data), hw.STATUS_OK, True)
    hdr = {"deflate": b"", "zlib": b"\x78\x9c", "gzip": bytes.fromhex("1f8b0800000000000003")}
    assert zlib.decompress(hdr[container] + body, wbits) == data
    if container == "zlib":
        assert w[hw.DW_CHECKSUM] == zlib.adler32(data)
    if container == "gzip":
        assert w[hw.DW_CHECKSUM] == zlib.crc32(data) and w[hw.DW_ISIZE] == len(data)

    d = Client()
    d.bring_up(hw.ZIP_QC_DECOMPRESS)
    consumed, _, st, last, out, _ = d.job(fmt, body + b"trailing")
    # a stateless job is a whole stream: its end is status 0 with the last-block bit
    assert (st, last, out, consumed) == (hw.STATUS_OK, True, data, len(body))


def test_negative_compression_and_small_output() -> None:
    c = Client()
    c.bring_up()
    noise = os.urandom(5000)
    _, produced, st, last, body, _ = c.job(Format("deflate", 15), noise)
    assert st == hw.STATUS_NEGACOMPRESS and last and produced > len(noise)
    assert zlib.decompress(body, -15) == noise
    _, produced, st, _, _, _ = c.job(Format("deflate", 15), noise, avail=1000)
    assert (st, produced) == (hw.STATUS_DST_TOO_SMALL, 0)


def test_decompress_errors() -> None:
    good = zlib.compress(b"hello world " * 200)[2:]  # zlib body + trailer, header stripped
    c = Client()
    c.bring_up(hw.ZIP_QC_DECOMPRESS)
    z = Format("zlib", 15)
    assert c.job(z, b"\xff\xff\xff\xff garbage")[2] == hw.STATUS_BAD_DATA
    _, _, st, last, _, _ = c.job(z, good[:len(good) // 2])
    assert st == hw.STATUS_OK and not last  # input ended inside the stream: no end flag
    bad_sum = good[:-1] + bytes([good[-1] ^ 1])
    assert c.job(z, bad_sum)[2] == hw.STATUS_CRC_ERR
    assert c.job(z, good, avail=200)[2] == hw.STATUS_DST_TOO_SMALL


def test_dma_fault_is_a_status_and_the_queue_goes_on() -> None:
    c = Client()
    c.bring_up()
    _, _, st, _, _, _ = c.job(Format("deflate", 15), b"abc", src=0x7000_0000)
    assert st == hw.STATUS_DMA_FAULT and c.qm.stats["dma_faults"] == 1
    assert c.job(Format("deflate", 15), b"abc" * 100)[2] == hw.STATUS_OK


def test_stateful_streams_carry_state_and_report_pending_output() -> None:
    c = Client()
    c.bring_up()
    fmt = Format("gzip", 15)
    parts = [b"alpha " * 3000, b"beta " * 3000, b"gamma " * 3000]
    out = b""
    csum, isize = 0, 0
    for i, p in enumerate(parts):
        _, _, st, _, body, w = c.job(fmt, p, stateful=True, new_stream=i == 0,
                                     finish=i == len(parts) - 1, ctx=IOVA + STREAM_CTX + 64,
                                     checksum=csum, isize=isize)
        assert st == hw.STATUS_OK
        out += body
        csum, isize = w[hw.DW_CHECKSUM], w[hw.DW_ISIZE]
    full = b"".join(parts)
    assert zlib.decompress(bytes.fromhex("1f8b0800000000000003") + out, 31) == full

    d = Client()
    d.bring_up(hw.ZIP_QC_DECOMPRESS)
    got, rest, first = b"", out, True
    for _ in range(200):
        consumed, _, st, last, body, w = d.job(fmt, rest, avail=4096, stateful=True,
                                               new_stream=first, ctx=IOVA + STREAM_CTX + 64)
        first = False
        got += body
        rest = rest[consumed:]
        if st == hw.STATUS_DECOMP_END:
            break
        assert st == hw.STATUS_OK
        assert w[hw.DW_CTX_DW0] & hw.CTX_ST_MASK in (0, hw.CTX_ST_DECOMPING_NO_SPACE)
    assert got == full and last


def test_completion_interrupt_writes_eq_and_raises_msi() -> None:
    c = Client()
    c.bring_up(irq=True)
    c.job(Format("deflate", 15), b"z" * 100)
    assert c.irqs == [0]
    (eqe,) = struct.unpack_from("<I", c.mem, EQ)
    assert eqe & 0xFFFF == 0 and eqe >> 16 & 1 == 1  # CQ 0, phase 1
    c.w64(qm.QM_DOORBELL_EQ_AEQ_BASE_V2, qm.doorbell_v2(0, qm.QM_DB_CMD_EQ, 1))
    assert c.r32(qm.QM_VF_EQ_INT_SOURCE) == 0


def aeqes(c: Client, n: int = 16) -> list[tuple[int, int]]:
    """(type, queue) of each AEQE the model wrote with phase 1 (a first lap of the AEQ)."""
    out = []
    for i in range(n):
        (w,) = struct.unpack_from("<I", c.mem, AEQ + 4 * i)
        if not w >> 16 & 1:
            break
        out.append((w >> qm.AEQE_TYPE_SHIFT & 0xF, w & 0xFFFF))
    return out


def bring_up_latched(c: Client, eq_depth: int) -> None:
    """An irq queue, an EQ of `eq_depth` entries and an AEQ, every doorbell latched (trapped,
    as the lab serves Linux), both interrupts unmasked."""
    c.bring_up(irq=True)
    c.qm.cq_rearm = True
    assert c.ctx(qm.QM_MB_CMD_EQC, 0, qm.EQC.pack(0, 0, IOVA + EQ, 0, 0, 0, 0,
                                                   (eq_depth - 1) | qm.EQC_DW6_PHASE)) == 0
    assert c.ctx(qm.QM_MB_CMD_AEQC, 0, qm.EQC.pack(0, 0, IOVA + AEQ, 0, 0, 0, 0,
                                                    15 | qm.EQC_DW6_PHASE)) == 0
    c.qm.write(qm.QM_VF_AEQ_INT_MASK, struct.pack("<I", 0))


def test_a_full_event_queue_raises_one_eq_overflow_aeqe() -> None:
    """docs/research/hisi-qm-zip.md §7.2: a driver that re-arms (priority-1 CQ doorbells) but
    never acknowledges the EQ fills it; the EQE that does not fit is not written, one
    EQ-overflow AEQE and the AEQ's MSI go out instead, and only once until EQEs are consumed."""
    c = Client()
    bring_up_latched(c, eq_depth=4)
    fmt = Format("deflate", 15)
    for _ in range(5):
        c.job(fmt, b"e" * 100)
        c.w64(qm.QM_DOORBELL_SQ_CQ_BASE_V2, qm.doorbell_v2(0, qm.QM_DB_CMD_CQ, c.cq_head, 1))
    assert c.qm.eq.tail == 3 and c.qm.stats["eqes"] == 3  # 4 entries, one stays empty
    assert aeqes(c) == [(qm.AEQE_TYPE_EQ_OVERFLOW, 0)]
    assert c.irqs == [0, 0, 0, 1] and c.r32(qm.QM_VF_AEQ_INT_SOURCE) == 1
    # Consuming the EQEs clears the overflow: the next one is reported again.
    c.w64(qm.QM_DOORBELL_EQ_AEQ_BASE_V2, qm.doorbell_v2(0, qm.QM_DB_CMD_EQ, 3))
    c.w64(qm.QM_DOORBELL_EQ_AEQ_BASE_V2, qm.doorbell_v2(0, qm.QM_DB_CMD_AEQ, 1))
    assert c.r32(qm.QM_VF_AEQ_INT_SOURCE) == 0
    for _ in range(4):
        c.job(fmt, b"f" * 100)
        c.w64(qm.QM_DOORBELL_SQ_CQ_BASE_V2, qm.doorbell_v2(0, qm.QM_DB_CMD_CQ, c.cq_head, 1))
    assert aeqes(c) == [(qm.AEQE_TYPE_EQ_OVERFLOW, 0)] * 2 and c.qm.stats["aeqes"] == 2


@pytest.mark.parametrize("latched", [True, False], ids=["latched", "polled"])
def test_a_full_completion_queue_stops_the_queue(latched: bool) -> None:
    """§7.2: with latched doorbells the model knows the CQ head, and a job whose CQE would not
    fit is not run: the queue stops and a CQ-overflow AEQE names it (Linux stops that queue);
    restarting the queue (its contexts loaded again) recovers it. With a polled doorbell page a
    CQ doorbell may be hidden by a later SQ doorbell, so there the CQ is not judged."""
    c = Client()
    bring_up_latched(c, eq_depth=64)
    c.qm.cq_rearm = latched
    fmt = Format("deflate", 15)
    for _ in range(DEPTH - 1):  # no CQ doorbell: the CQ holds DEPTH - 1 CQEs, its limit
        c.job(fmt, b"c" * 100)
    tmpl = SqeTemplate.for_format(fmt, qm.QM_HW_V2)
    tmpl.fill(c.mem, SQ + c.tail * hw.SQE_SIZE, src=IOVA + SRC, in_len=100, dst=IOVA + DST,
              avail=4096, tag=7)
    c.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, (c.tail + 1) % DEPTH))
    if not latched:
        assert c.qm.process() == 1 and aeqes(c) == []
        return
    assert c.qm.process() == 0 and c.qm.stats["jobs"] == DEPTH - 1
    assert aeqes(c) == [(qm.AEQE_TYPE_CQ_OVERFLOW, 0)] and c.irqs[-1] == 1
    assert not c.qm.queues[0].running and "CQ overflow" in c.qm.queues[0].broken
    c.start_queue(0, hw.ZIP_QC_COMPRESS, irq=True)
    assert c.job(fmt, b"again" * 20)[2] == hw.STATUS_OK


def test_level_triggered_doorbell_and_reset() -> None:
    c = Client()
    c.bring_up()
    fmt = Format("deflate", 15)
    tmpl = SqeTemplate.for_format(fmt, qm.QM_HW_V2)
    c.mem[SRC:SRC + 10] = b"0123456789"
    for slot in range(3):
        tmpl.fill(c.mem, SQ + slot * 128, src=IOVA + SRC, in_len=10, dst=IOVA + DST + slot * 4096,
                  avail=4096, tag=slot)
    # SQ doorbell (tail 3), then a CQ doorbell hides it in the polled word: the model still
    # knows tail 3 from the first value it saw, and a re-stored SQ doorbell is harmless.
    c.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, 3))
    c.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_CQ, 0))
    assert c.qm.process() == 3
    c.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, 3))
    assert c.qm.process() == 0
    c.qm.reset()
    assert not c.qm.queues[0].running and c.qm.process() == 0


def test_the_mailbox_log_stays_bounded() -> None:
    """A client can issue any number of mailbox commands: the model keeps the last ones (for
    its debug window) and a count of all, not an ever-growing list."""
    c = Client()
    n = QmFunction.MB_LOG_MAX + 500
    for _ in range(n):
        c.mailbox(qm.QM_MB_CMD_SQC_VFT_V2, op=1)
    c.mailbox(qm.QM_MB_CMD_SQC_VFT_V2, op=0)  # refused (a VF only reads its VFT): status 1
    assert len(c.qm.mb_log) == QmFunction.MB_LOG_MAX
    assert c.qm.mb_count == n + 1
    assert c.qm.mb_log[-1] == (qm.QM_MB_CMD_SQC_VFT_V2, 0, 0, 1)


def test_the_debug_window_shows_the_commands_since_a_count() -> None:
    """BAR0's mailbox log is a ring indexed by command number: a reader that noted the count
    earlier (the lab's hisi_zip test, after our own driver's runs) decodes exactly the newer
    commands, however many came before."""
    c = Client()
    for _ in range(DBG_MB_LOG_LEN + 100):
        c.mailbox(qm.QM_MB_CMD_SQC_VFT_V2, op=1)
    since = c.qm.mb_count
    c.mailbox(qm.QM_MB_CMD_SQC_BT, base=IOVA)
    c.mailbox(qm.QM_MB_CMD_SQC_VFT_V2, op=0)
    win = debug_window(c.qm)
    assert decode_mailbox_log(win, since) == [("SQC_BT", 0, 0, 0), ("SQC_VFT_V2", 0, 0, 1)]
    log = decode_mailbox_log(win)
    assert len(log) == DBG_MB_LOG_LEN and log[-3] == ("SQC_VFT_V2", 1, 0, 0)
