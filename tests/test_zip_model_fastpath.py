"""The ZIP model's per-job fast path: ring views kept between passes (and dropped whenever the
queue, the client's memory or bus mastering changes, so a revoked map is never held), the shapes
of SQEs decoded once, and stateless decompression written out in pieces. Judged through the real
stack (the driver over vfio-user, the model served in a thread) and against `zlib`."""

from __future__ import annotations

import logging
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import warpdrive.zip as wz
from rigs.zip_model import AEQ, CQ, DEPTH, DST, EQ, IOVA, SIZE, SQ, SRC, Client, model_client
from tests.test_emu_server_errors import served_in_process
from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.sqe import Format, SqeTemplate
from warpdrive.emu.models import _zip_layout as L
from warpdrive.emu.models._deflate import _PIECE, DeflateUnit
from warpdrive.emu.models._qm import QueueState
from warpdrive.emu.models.zip import DBG_BAR, DBG_INJECT, ZipModel
from warpdrive.emu.server import VfioUserServer
from warpdrive.uapi import pci_regs


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, ZipModel, VfioUserServer]]:
    model = ZipModel(workers="1")
    path = str(tmp_path / "zip.sock")
    with served_in_process(model, path) as server:
        yield path, model, server


def test_ring_views_are_kept_while_jobs_flow_and_dropped_before_unmap(served, caplog) -> None:
    path, model, _server = served
    caplog.set_level(logging.WARNING)
    rng = random.Random(5)
    for life in range(2):  # a second client: new queues, new memory, the same model
        eng = wz.open_engine("vfio-user:" + path, announce=False)
        try:
            for n in (0, 5, 4096, 70000):
                data = rng.randbytes(n // 2) + bytes(n - n // 2)
                blob = wz.compress(data, 6, device=eng)
                assert zlib.decompress(blob) == data
                assert wz.decompress(zlib.compress(data), device=eng) == data
            assert model._views, "the rings of the queues in use are kept"
        finally:
            eng.close()
        deadline = time.monotonic() + 5
        while model._views and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not model._views, f"life {life}: ring views outlived the client's memory"
    assert "still holds a view" not in caplog.text  # (the server's warning on a held view)


def test_a_client_that_vanishes_leaves_no_ring_view_held(served) -> None:
    """A client killed with its queues running: the server drops its memory without a queue
    stop, and the model must let go of the rings first (none held past the unmap)."""
    path, model, _server = served
    child = (f"import os, warpdrive.zip as wz\n"
             f"eng = wz.open_engine('vfio-user:{path}', announce=False)\n"
             f"blob = wz.compress(b'x' * 5000, device=eng)\n"
             f"assert wz.decompress(blob, device=eng) == b'x' * 5000\n"
             f"os._exit(0)\n")
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    deadline = time.monotonic() + 5
    while model._views and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not model._views
    assert model.host_stats()["views_held_after_unmap"] == 0


def test_stateless_decompression_in_pieces_matches_zlib() -> None:
    """Outputs of several pieces: exact room, one byte short, a stream cut short, checksums."""
    unit = DeflateUnit()
    rng = random.Random(7)
    data = b"".join(rng.randbytes(300) * rng.randrange(1, 40) for _ in range(60))
    assert len(data) > 2 * _PIECE
    for alg, wbits, head, tail in ((L.ALG_DEFLATE, -15, 0, 0), (L.ALG_ZLIB, 15, 2, 4),
                                   (L.ALG_GZIP, 31, 10, 8)):
        full = zlib.compress(data, 6, wbits)
        src = full[head:]  # software owns the header; the engine gets body and trailer
        exact = bytearray(len(data))
        res = unit.decompress_stateless(alg, src, exact)
        assert (res.status, res.consumed, res.produced, res.last) == \
            (L.STATUS_OK, len(src), len(data), True)
        assert exact == data
        if alg == L.ALG_ZLIB:
            assert res.checksum == zlib.adler32(data)
        elif alg == L.ALG_GZIP:
            assert res.checksum == zlib.crc32(data)
        short = unit.decompress_stateless(alg, src, bytearray(len(data) - 1))
        assert short.status == L.STATUS_DST_TOO_SMALL
        body_end = len(src) - tail
        cut = unit.decompress_stateless(alg, src[:body_end // 2], bytearray(len(data)))
        assert cut.status == L.STATUS_OK and not cut.last and cut.consumed == body_end // 2
        assert 0 < cut.produced < len(data)
        extra = unit.decompress_stateless(alg, src + b"more", bytearray(len(data) + 10))
        assert extra.consumed == len(src) and extra.last  # trailing bytes are not consumed
        if tail:
            bad = bytearray(src)
            bad[-1] ^= 1
            r = unit.decompress_stateless(alg, bytes(bad), bytearray(len(data)))
            assert r.status == L.STATUS_CRC_ERR and r.consumed == len(src)
    corrupt = unit.decompress_stateless(L.ALG_DEFLATE, b"\xff" * 20, bytearray(100))
    assert corrupt.status == L.STATUS_BAD_DATA


def test_polls_that_see_no_doorbell_move_do_not_run_the_queues(served) -> None:
    """While the server spins with nothing submitted, a poll is the doorbell compare only; a
    doorbell still starts work at once."""
    path, model, _server = served
    eng = wz.open_engine("vfio-user:" + path, announce=False)
    try:
        assert wz.decompress(wz.compress(b"abc" * 100, device=eng), device=eng) == b"abc" * 100
        qm = model.qm
        assert qm is not None
        calls = [0]
        process, process_queue, process_one = qm.process, qm.process_queue, qm.process_one

        def counted(budget: int | None = None) -> int:
            calls[0] += 1
            return process(budget)

        def counted_queue(q: QueueState, budget: int) -> int:  # (the doorbell pass's ways)
            calls[0] += 1
            return process_queue(q, budget)

        def counted_one(q: QueueState, sq: memoryview, cq: memoryview) -> int:
            calls[0] += 1
            return process_one(q, sq, cq)

        polls = [0]
        poll = model.poll

        def counted_poll() -> bool:
            polls[0] += 1
            return poll()

        qm.process = counted  # type: ignore[method-assign]
        qm.process_queue = counted_queue  # type: ignore[method-assign]
        qm.process_one = counted_one  # type: ignore[method-assign]
        model.poll = counted_poll  # type: ignore[method-assign]
        time.sleep(0.02)  # (the client's last CQ doorbell moves the word once more)
        idle_calls, idle_polls = calls[0], polls[0]
        time.sleep(0.05)  # the server keeps polling (spinning, then now and then asleep)
        assert polls[0] > idle_polls and calls[0] == idle_calls
        assert zlib.decompress(wz.compress(b"x" * 1000, device=eng)) == b"x" * 1000
        assert calls[0] > idle_calls
    finally:
        eng.close()


def test_a_lone_job_of_a_doorbell_pass_completes_and_signals_as_process_does(served) -> None:
    """The doorbell pass's one-SQE way (`QmFunction.process_one`) posts the CQE, counts the job
    and raises the completion interrupt of an armed queue: a client that only sleeps on the
    interrupt (wait="block") gets every call back (a missed signal would hang it until the
    engine's timeout), with zlib's bytes, and a later batch still takes the full pass."""
    path, model, _server = served
    qm = model.qm
    assert qm is not None
    ones = [0]
    process_one = qm.process_one

    def counted_one(q: QueueState, sq: memoryview, cq: memoryview) -> int:
        ones[0] += 1
        return process_one(q, sq, cq)

    qm.process_one = counted_one  # type: ignore[method-assign]
    eng = wz.open_engine("vfio-user:" + path, wait="block", timeout=10.0, announce=False)
    try:
        jobs0, eqes0 = qm.stats["jobs"], qm.stats["eqes"]
        for n in range(1, 40):
            data = bytes(range(n)) * 3
            assert wz.compress(data, 6, device=eng) == zlib.compress(data, 6)
            assert wz.decompress(zlib.compress(data), device=eng) == data
        # (a call acknowledges its interrupt with a trapped EQ doorbell: the next pass is a
        # full one, so not every call takes the one-SQE way)
        assert ones[0] >= 10, "one-shot calls take the one-SQE way"
        assert qm.stats["jobs"] - jobs0 == 78
        assert qm.stats["eqes"] - eqes0 >= 60, "each sleeping call was woken by its interrupt"
        # several SQEs at once (a compressobj's pieces) still complete, in order
        c = wz.compressobj(6, device=eng)
        big = random.Random(3).randbytes(300_000)
        assert zlib.decompress(c.compress(big) + c.flush()) == big
    finally:
        eng.close()


def test_a_reloaded_cq_context_moves_the_kept_cq_view() -> None:
    """The driver gives queue 0 a new CQ (CQC only, the SQC stays): the next CQE goes into the
    new ring, not into a view of the old one."""
    c, model, fn = model_client()
    try:
        c.bring_up()
        assert c.job(Format("deflate", 15), b"hello " * 10)[2] == hw.STATUS_OK
        assert 0 in model._views
        new_cq = CQ + 0x8000
        cqc = qm.CQC.pack(0, 0, IOVA + new_cq, 0, (DEPTH - 1) | 4 << 12, 0, 0, 0, 0, 1, 0)
        assert c.ctx(qm.QM_MB_CMD_CQC, 0, cqc) == 0
        tmpl = SqeTemplate.for_format(Format("deflate", 15), qm.QM_HW_V2)
        c.mem[SRC:SRC + 5] = b"hello"
        tmpl.fill(c.mem, SQ + c.tail * hw.SQE_SIZE, in_len=5, src=IOVA + SRC, dst=IOVA + DST,
                  avail=4096, tag=7)
        slot, c.tail = c.tail, c.tail + 1
        c.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, c.tail))
        assert c.qm.process() == 1
        cqe = qm.CQE.unpack_from(c.mem, new_cq)
        assert cqe[6] & 1 == 1 and cqe[3] == slot  # phase 1 (a fresh ring), this job's slot
        assert qm.CQE.unpack_from(c.mem, CQ + 16)[6] & 1 == 0  # nothing in the old ring
    finally:
        fn.close()


def test_the_model_pass_benchmark_runs() -> None:
    """benchmarks/zip_model_pass.py's child measures this checkout (a smoke run: figures are
    the benchmark's business, never asserted here)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import zip_model_pass
    finally:
        sys.path.pop(0)
    for served in (False, True):  # (--served: through ZipModel.poll on a server Function)
        out = zip_model_pass.measure(zip_model_pass.ROOT, 100, ("compress 5", "decompress 4096"),
                                     served)
        for row in out.values():
            assert row["bytecodes"] > 0 and row["model_us"] > 0 and row["zlib_us"] > 0


def test_an_oversized_job_does_not_send_its_shape_the_slow_way() -> None:
    """A job refused for its lengths leaves nothing in the shape cache: the next job of the same
    shape and a proper size still takes the flat path (shapes are cached without lengths)."""
    c, model, fn = model_client()
    try:
        c.bring_up()
        jobs = model.jobs
        assert jobs is not None
        fmt = Format("deflate", 15)
        assert c.job(fmt, b"hello", avail=L.HZ_MAX_SIZE + 1)[2] == hw.STATUS_BAD_REQUEST
        assert not jobs._shapes
        assert c.job(fmt, b"hello " * 10)[2] == hw.STATUS_OK
        assert list(jobs._shapes.values()) == [(True, L.ALG_DEFLATE, 15)]
    finally:
        fn.close()


def test_buffer_views_are_kept_between_jobs_and_dropped_before_unmap() -> None:
    """`ZipJobs._execute` keeps the views of a job's buffers for the next job on the same pieces;
    an unmap (or bus mastering off) drops them first, so the unmapped memory is never held and
    the next job there faults as before."""
    c, model, fn = model_client()
    try:
        c.bring_up()
        iova2, size2 = IOVA + SIZE, 1 << 16  # a second map: the job's input lives there
        fd = os.memfd_create("zip-model-fastpath-2")
        os.ftruncate(fd, size2)
        fn.dma.add(iova2, size2, fd, 0, True, True)
        os.close(fd)
        fmt = Format("deflate", 15)
        for _ in range(3):
            assert c.job(fmt, b"hello " * 10, src=iova2)[2] == hw.STATUS_OK
        jobs = model.jobs
        assert jobs is not None
        assert any(k[0] == iova2 for k in jobs._kept)
        model.on_dma_unmap(iova2, size2)  # as the server does before it removes the map
        assert not jobs._kept
        fn.dma.remove(fn.dma.covered(iova2, size2))
        assert fn.dma.held_after_unmap == 0
        assert c.job(fmt, b"hello " * 10, src=iova2)[2] == L.STATUS_DMA_FAULT
        assert c.job(fmt, b"hello " * 10)[2] == hw.STATUS_OK
        assert jobs._kept
        model.config_write(pci_regs.PCI_COMMAND, struct.pack("<H", pci_regs.PCI_COMMAND_MEMORY))
        assert not jobs._kept  # bus mastering off: nothing kept from when it was on
    finally:
        fn.close()


@pytest.mark.parametrize("event", ["reset", "client gone"])
def test_buffer_views_kept_by_flat_end_with_a_reset_or_the_client(event: str) -> None:
    """The other events that end what a kept view was checked against: a device reset (bus
    mastering off, the function's state gone) and the client leaving (its memory unmapped
    wholesale): no view is kept past them, and none holds the client's memory."""
    c, model, fn = model_client()
    try:
        c.bring_up()
        assert c.job(Format("deflate", 15), b"hello " * 10)[2] == hw.STATUS_OK
        jobs = model.jobs
        assert jobs is not None and jobs._kept
        if event == "reset":
            fn.handle_reset(None)  # type: ignore[arg-type]  # (the message is not read)
        else:
            fn.detach_client()
            assert fn.dma.held_after_unmap == 0
        assert not jobs._kept
    finally:
        fn.close()


def test_a_job_in_flight_at_an_unmap_leaves_no_ring_view_behind() -> None:
    """The client unmaps its memory (one map: rings and buffers) while a big job is on a
    worker: the job is finished and its CQE posted first (`ThreadedJobs.settle`, through the
    ring views), and the views go only after that, so none outlives the unmap (a ring view
    taken again meanwhile would be held past it: revoked to zero pages, which the next pass
    would read as SQEs instead of faulting)."""
    c, model, fn = model_client(workers="2")
    try:
        c.bring_up()
        data = random.Random(11).randbytes(512 << 10)  # (over INLINE_MAX: onto a worker)
        c.mem[SRC:SRC + len(data)] = data
        SqeTemplate.for_format(Format("deflate", 15), qm.QM_HW_V2).fill(
            c.mem, SQ, in_len=len(data), src=IOVA + SRC, dst=IOVA + DST, avail=1 << 20, tag=0)
        model._bells[0][0].value = qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, 1)
        assert model.poll() and model._inflight
        model.on_dma_unmap(IOVA, SIZE)  # as the server does before it removes the map
        assert qm.CQE.unpack_from(c.mem, CQ)[6] & 1 == 1, "the job was posted before the unmap"
        assert not model._views
        fn.dma.remove(fn.dma.covered(IOVA, SIZE))
        assert fn.dma.held_after_unmap == 0
    finally:
        fn.close()


class _Bar:
    """The model's trapped BAR2 as the driver stand-in's `qm`: its register writes reach
    `ZipModel.region_write` (which makes the model's next pass a full one), as a client's do."""

    def __init__(self, model: ZipModel) -> None:
        self.model = model

    def write(self, off: int, data: bytes) -> None:
        self.model.region_write(L.QM_BAR, off, data)

    def read(self, off: int, size: int) -> bytes:
        return self.model.region_read(L.QM_BAR, off, size)


@pytest.mark.parametrize("seed", range(6))
def test_the_doorbell_pass_leaves_the_device_as_the_full_pass_does(seed: int) -> None:
    """`ZipModel.poll`'s quick pass (only the queue the doorbell word names: `QmFunction.rung`,
    `process_one`, `process_queue`) against the full pass (`_poll`: every doorbell, then
    `process` over every queue) on two models driven alike by random driver steps: jobs on
    two queues (16-deep rings: wrap-around; 1-3 SQEs a doorbell; two queues' doorbells stored
    between passes, the word showing the last; some through the trapped page), CQ doorbells, EQ
    doorbells and the EQ mask (trapped), STOP_QP, a restart, DBG_INJECT overflows. After every
    step both have written the same rings, EQEs, AEQEs and results, raised the same vectors and
    counted the same."""
    rng = random.Random(seed)

    def start(c: Client, qn: int) -> None:  # (queue qn's own rings, empty; interrupts on)
        c.mem[CQ + qn * 0x100:CQ + qn * 0x100 + DEPTH * 16] = bytes(DEPTH * 16)
        sqc = qm.SQC.pack(0, 0, IOVA + SQ + qn * 0x800, 0, (DEPTH - 1) | 7 << 12, 0, 0, 0, 0, qn,
                          1 << 4, 0)
        cqc = qm.CQC.pack(0, 0, IOVA + CQ + qn * 0x100, 0, (DEPTH - 1) | 4 << 12, 0, 0, 0, 0,
                          1 | 2, 0)
        assert c.ctx(qm.QM_MB_CMD_SQC, qn, sqc) == c.ctx(qm.QM_MB_CMD_CQC, qn, cqc) == 0

    sides = []
    for fast in (True, False):
        c, model, fn = model_client()
        c.qm = _Bar(model)  # type: ignore[assignment]
        irqs: list[int] = []
        model.qm.notify = lambda v, irqs=irqs: irqs.append(v) is None  # type: ignore[union-attr]
        if not fast:
            model._cell = None  # (ZipModel.poll then always takes the full pass)
        c.bring_up(irq=True)
        assert c.ctx(qm.QM_MB_CMD_AEQC, 0, qm.EQC.pack(0, 0, IOVA + AEQ, 0, 0, 0, 0,
                                                       255 | qm.EQC_DW6_PHASE)) == 0
        c.qm.write(qm.QM_VF_AEQ_INT_MASK, struct.pack("<I", 0))
        start(c, 1)
        sides.append((c, model, fn, irqs))
    ones = [0]  # the fast side's one-SQE passes
    qm_fast = sides[0][1].qm
    assert qm_fast is not None
    process_one = qm_fast.process_one

    def counted_one(q: QueueState, sq: memoryview, cq: memoryview) -> int:
        ones[0] += 1
        return process_one(q, sq, cq)

    qm_fast.process_one = counted_one  # type: ignore[method-assign]
    tmpl = SqeTemplate.for_format(Format("deflate", 15), qm.QM_HW_V2)
    tail, reaped, phase = [0, 0], [0, 0], [1, 1]  # (the driver's view: alike on both)
    eq_head = [0, 1]  # (index, phase)
    for c, _, _, _ in sides:
        c.mem[SRC:SRC + 40] = b"the quick brown fox jumps over the dog. "
    try:
        for step in range(250):
            op, qn = rng.random(), rng.randrange(2)
            stores: list[tuple[int, int, int]] = []  # (region, offset, value): trapped writes
            bell = None  # the value stored into the mapped doorbell word
            if op < 0.45:
                k = min(rng.choice((1, 1, 2, 3)), DEPTH - 2 - (tail[qn] - reaped[qn]) % DEPTH)
                for c, _, _, _ in sides:
                    for i in range(k):
                        t = (tail[qn] + i) % DEPTH
                        tmpl.fill(c.mem, SQ + qn * 0x800 + t * hw.SQE_SIZE, in_len=40,
                                  src=IOVA + SRC, dst=IOVA + DST + (qn * DEPTH + t) * 0x1000,
                                  avail=0x1000, tag=t)
                tail[qn] = (tail[qn] + k) % DEPTH
                ring = rng.random()
                if ring < 0.8:
                    bell = qm.doorbell_v2(qn, qm.QM_DB_CMD_SQ, tail[qn])
                elif ring < 0.9:  # (stored through the trapped page, as a client that did
                    # not map it does)
                    stores.append((L.QM_BAR, qm.QM_DOORBELL_SQ_CQ_BASE_V2,
                                   qm.doorbell_v2(qn, qm.QM_DB_CMD_SQ, tail[qn])))
            elif op < 0.6:  # reap the CQEs the device wrote (alike on both, checked below)
                mem = sides[0][0].mem
                while qm.CQE.unpack_from(mem, CQ + qn * 0x100 + reaped[qn] * 16)[6] & 1 == \
                        phase[qn]:
                    reaped[qn] = (reaped[qn] + 1) % DEPTH
                    phase[qn] ^= reaped[qn] == 0
                if rng.random() < 0.8:
                    bell = qm.doorbell_v2(qn, qm.QM_DB_CMD_CQ, reaped[qn])
            elif op < 0.7:  # consume the EQEs
                mem = sides[0][0].mem
                while struct.unpack_from("<I", mem, EQ + 4 * eq_head[0])[0] >> 16 & 1 == \
                        eq_head[1]:
                    eq_head[0] = (eq_head[0] + 1) % 256
                    eq_head[1] ^= eq_head[0] == 0
                stores.append((L.QM_BAR, qm.QM_DOORBELL_EQ_AEQ_BASE_V2,
                               qm.doorbell_v2(0, qm.QM_DB_CMD_EQ, eq_head[0])))
            elif op < 0.75:
                stores.append((L.QM_BAR, qm.QM_VF_EQ_INT_MASK, rng.randrange(2)))
            elif op < 0.76:  # stop the queue (draining it): later jobs wait for a restart
                for c, _, _, _ in sides:
                    assert c.mailbox(qm.QM_MB_CMD_STOP_QP, qn) == 0
            elif op < 0.78:  # start the queue again, its rings empty
                for c, _, _, _ in sides:
                    start(c, qn)
                tail[qn], reaped[qn], phase[qn] = 0, 0, 1
            elif op < 0.785:
                kind = rng.choice((L.AEQE_TYPE_CQ_OVERFLOW, L.AEQE_TYPE_EQ_OVERFLOW))
                stores.append((DBG_BAR, DBG_INJECT, kind | qn << 16))
            polls = rng.choice((0, 1, 1, 2))
            for _, model, _, _ in sides:
                for region, off, v in stores:
                    model.region_write(region, off, struct.pack("<Q" if off in (
                        qm.QM_DOORBELL_SQ_CQ_BASE_V2, qm.QM_DOORBELL_EQ_AEQ_BASE_V2) else "<I", v))
                if bell is not None:
                    model._bells[0][0].value = bell
                for _ in range(polls):
                    model.poll()
            (a, ma, _, ia), (b, mb, _, ib) = sides
            assert ma.qm is not None and mb.qm is not None
            assert bytes(a.mem[:0x30000]) == bytes(b.mem[:0x30000]), f"step {step}: rings"
            assert a.mem[DST:DST + 0x30000] == b.mem[DST:DST + 0x30000], f"step {step}: output"
            assert ia == ib, f"step {step}: vectors"
            assert ma.qm.stats == mb.qm.stats, f"step {step}"
            assert ma.qm.queues == mb.qm.queues, f"step {step}: queues"
        assert ma.qm.stats["jobs"] > 20 and ones[0] > 2, "the quick pass ran"
    finally:
        for _, _, fn, _ in sides:
            fn.close()
