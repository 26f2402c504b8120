"""VF bring-up and the queue/doorbell machinery, end to end: the driver over a real `Device`
(the vfio-user client backend) against the ZIP model in its own server process. The model's BAR0
introspection window (model-only; drivers never touch it) shows what the device side observed.

No ZIP hardware exists here or in the QEMU lab, so this is where the driver's VFIO-facing code
(`QmDevice`, which only uses `Device`/`DmaSpace`/`Mmio`) runs against a device."""

from __future__ import annotations

import struct
import threading
import time
import zlib

import pytest

import warpdrive
import warpdrive.zip as wz
from warpdrive.backends.vfiouser.launcher import model_spin
from warpdrive.devices.hisi_qm import regs as qmr
from warpdrive.devices.hisi_qm.bringup import QmDevice
from warpdrive.devices.hisi_qm.queue import QmQueue, QueueStoppedError
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.job import COMPRESS, DECOMPRESS
from warpdrive.emu.models.zip import DBG_BAR, DBG_SIZE, decode_mailbox_log, decode_stats
from warpdrive.errors import UnsupportedError
from warpdrive.uapi.vfio import VFIO_PCI_MSI_IRQ_INDEX


def model_view(dev: warpdrive.Device) -> tuple[list[tuple[str, int, int, int]], dict[str, int]]:
    win = dev.region_read(DBG_BAR, 0, DBG_SIZE)
    return decode_mailbox_log(win), decode_stats(win)


@pytest.mark.parametrize("revision", [qmr.QM_HW_V3, qmr.QM_HW_V2], ids=["v3", "v2"])
def test_bringup_mailbox_order_and_contexts(revision: int) -> None:
    with warpdrive.open("emu:zip", model_options={"revision": hex(revision)}) as dev:
        qm = QmDevice(dev, hw.ZIP)
        assert (qm.qp_base, qm.qp_num) == (0, 2)
        assert qm.caps.version == revision and qm.caps.sq_depth == 1024
        q0 = qm.start_queue(COMPRESS)
        q1 = qm.start_queue(DECOMPRESS)
        log, stats = model_view(dev)
        # hisi_qm's order: VFT query, EQC, AEQC, SQC_BT, CQC_BT, then SQC + CQC per queue.
        assert log == [("SQC_VFT_V2", 1, 0, 0), ("EQC", 0, 0, 0), ("AEQC", 0, 0, 0),
                       ("SQC_BT", 0, 0, 0), ("CQC_BT", 0, 0, 0),
                       ("SQC", 0, 0, 0), ("CQC", 0, 0, 0), ("SQC", 0, 1, 0), ("CQC", 0, 1, 0)]
        # The model copied each context into the client's tables, as the driver sent them.
        assert qm._block is not None
        for q, alg in ((q0, COMPRESS), (q1, DECOMPRESS)):
            sqc = qmr.SQC.unpack_from(qm._block.view, qm.sqc_off + q.qn * 32)
            mem = qm._queues[q.qn][1]
            assert sqc[3] << 32 | sqc[2] == mem.iova
            assert sqc[4] == 1023 | 7 << 12 and sqc[10] >> 8 & 0xF == alg and sqc[9] == q.qn
            cqc = qmr.CQC.unpack_from(qm._block.view, qm.cqc_off + q.qn * 32)
            assert cqc[3] << 32 | cqc[2] == mem.iova + 1024 * 128 and cqc[4] == 1023 | 4 << 12
        # MSI was routed and the EQ/AEQ interrupts unmasked.
        assert qm.interrupt is not None
        assert qm.bar.read32(qmr.QM_VF_EQ_INT_MASK) == 0
        assert qm.bar.read32(qmr.QM_VF_AEQ_INT_MASK) == 0
        assert stats["resets"] == 0
        qm.close()
        _, stats = model_view(dev)
        assert stats["resets"] == 1  # close resets the function: no DMA may outlive it
        assert not dev.dma.mappings  # every queue and table buffer was unmapped


def test_v3_reads_capabilities_and_stops_queues_by_mailbox() -> None:
    with warpdrive.open("emu:zip", model_options={"revision": "0x30", "queues": "4"}) as dev:
        qm = QmDevice(dev, hw.ZIP)
        c = qm.caps
        assert c.version == qmr.QM_HW_V3 and c.cap_ver != 0 and c.stop_qp and qm.qp_num == 4
        assert (c.irq_num, c.eq_vector, c.aeq_vector, c.db_isolation) == (3, 0, 1, False)
        # MSI offers the power of two above the 3 vectors a V3 VF has (QEMU enables them all)
        assert dev.irq_info(VFIO_PCI_MSI_IRQ_INDEX).count == 4
        assert qm.bar.read32(qmr.QM_VF_STATE) == qmr.QM_VF_STATE_READY
        q = qm.start_queue(COMPRESS, depth=64)
        assert q.sq_depth == 64
        qm.stop_queue(q)
        log, _ = model_view(dev)
        assert log[-1] == ("STOP_QP", 0, 0, 0)
        qm.close()


@pytest.mark.parametrize("options", [{"isolation": "1"}, {"isolation": "1", "doorbells": "trap"},
                                     {"doorbells": "trap"}],
                         ids=["isolation", "isolation-trapped", "trapped"])
def test_v3_doorbell_isolation_and_trapped_doorbells(options: dict[str, str]) -> None:
    """Doorbell isolation: each queue rings its own 64 KiB page of BAR4 (hisi_qm's qm_db_v2);
    trapped doorbells: every store is a message the model latches (what Linux needs)."""
    with warpdrive.open("emu:zip", model_options={"queues": "3", **options}) as dev:
        qm = QmDevice(dev, hw.ZIP)
        eng = wz.ZipEngine(qm)
        assert qm.caps.db_isolation == ("isolation" in options)
        data = b"isolated doorbells " * 2000
        for _ in range(3):
            assert zlib.decompress(eng.compress(data)) == data
            assert eng.decompress(zlib.compress(data)) == data
        _, stats = model_view(dev)
        assert stats["jobs"] == 6
        if options.get("doorbells") == "trap":
            assert stats["doorbells"] == 0  # nothing polled: every doorbell was a message
        eng.close()


def test_pf_is_refused_and_wrong_device_is_refused() -> None:
    with warpdrive.open("emu:testdev") as dev, pytest.raises(UnsupportedError):
        QmDevice(dev, hw.ZIP)


def test_queue_restart_ignores_a_stale_doorbell() -> None:
    with warpdrive.open("emu:zip") as dev:
        qm = QmDevice(dev, hw.ZIP)
        eng = wz.ZipEngine(qm)
        data = b"restart " * 1000
        for _ in range(3):  # same queue number each time; the old tail must not be replayed
            assert zlib.decompress(eng.compress(data)) == data
            eng.lanes[COMPRESS].close()
        _, stats = model_view(dev)
        assert stats["jobs"] == 3
        eng.close()


def test_batch_rings_one_sq_doorbell() -> None:
    with wz.open_engine("emu", wait="spin") as eng:
        s = eng.session("compress", wbits=-15)
        q = eng.lanes[COMPRESS].q
        stores: list[int] = []
        real = q._ring

        def counting(value: int) -> None:
            stores.append(value)
            real(value)

        q._ring = counting  # type: ignore[method-assign]
        blocks = [bytes([i]) * 5000 for i in range(32)]
        jobs = [s.submit(b, flush=False) for b in blocks]
        assert stores == []  # nothing rung before flush()
        s.flush()
        assert len(stores) == 1 and qmr.doorbell_decode_v2(stores[0])[1:3] == (qmr.QM_DB_CMD_SQ, 32)
        done = s.drain()
        assert len(done) == 32
        assert [zlib.decompress(j.result(), -15) for j in jobs] == blocks
        sq_stores = [v for v in stores if qmr.doorbell_decode_v2(v)[1] == qmr.QM_DB_CMD_SQ]
        # Later SQ stores only repeat tail 32 (after CQ doorbells while work was outstanding).
        assert {qmr.doorbell_decode_v2(v)[2] for v in sq_stores} == {32}


@pytest.mark.parametrize("doorbell", ["mmap", "message"])
def test_messages_per_job(doorbell: str) -> None:
    """Zero vfio-user messages per job on the mmap path (counted by the server), and the message
    path really does send them (so the counter is not just stuck at zero)."""
    # A model that polls for the whole run (the suite's models do not spin at all): zero
    # messages holds while the model polls, and a model that stopped polling is rightly kicked
    # with a message, which a loaded machine caused within the default window (1 in 320 jobs).
    with model_spin(600e6), wz.open_engine("emu", doorbell=doorbell, wait="spin") as eng:
        dev = eng.source.dev
        s = eng.session("compress")
        jobs = []
        for i in range(8):
            buf = s.buffer(4096)
            buf.view[:4096] = bytes([65 + i]) * 4096
            jobs.append(s.prepare(buf, 4096))
        for j in jobs:  # warm up: queue started, buffers mapped
            s.submit(j)
        s.drain()
        _, before = model_view(dev)
        rounds = 40
        for _ in range(rounds):
            for j in jobs:
                s.submit(j, flush=False)
            s.flush()
            s.drain()
        _, after = model_view(dev)
        messages = after["messages"] - before["messages"] - 1  # minus the second window read
        njobs = rounds * len(jobs)
        assert after["jobs"] - before["jobs"] == njobs
        assert zlib.decompress(bytes(jobs[0].output)) == b"A" * 4096
        if doorbell == "mmap":
            assert messages == 0, f"{messages} messages for {njobs} jobs"
            assert after["trapped_writes"] == before["trapped_writes"]
        else:
            assert messages >= rounds  # at least the SQ doorbell of every batch


def test_interrupt_driven_completion() -> None:
    with wz.open_engine("emu", wait="block") as eng:
        data = b"interrupt me " * 5000
        assert zlib.decompress(eng.compress(data)) == data
        _, stats = model_view(eng.source.dev)
        assert stats["msis"] >= 1


def test_tx_stop_flag_refuses_submission() -> None:
    with wz.open_engine("emu", wait="spin") as eng:
        s = eng.session("compress")
        s.submit(b"x" * 100)
        s.drain()
        q = eng.lanes[COMPRESS].q
        q.set_stopped()
        with pytest.raises(QueueStoppedError):
            s.submit(b"y" * 100)
        q.set_stopped(False)
        q.ring()
        assert [zlib.decompress(j.result()) for j in s.drain()] == [b"y" * 100]


def test_eq_entries_are_acknowledged() -> None:
    with warpdrive.open("emu:zip") as dev:
        qm = QmDevice(dev, hw.ZIP)
        eng = wz.ZipEngine(qm, wait="block")
        eng.compress(b"a" * 10000)
        qm.ack_events()
        eqc = struct.unpack("<7I", dev.region_read(qmr.QM_BAR, qmr.QM_EQC_DW0, 28))
        assert eqc[0] & 0xFFFF == eqc[0] >> 16  # head caught up with tail
        eng.close()


def test_standalone_model_server(tmp_path) -> None:
    """`warpdrive emu zip --socket PATH` serves the model; the driver connects over vfio-user."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    sock = tmp_path / "zip.sock"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "warpdrive.cli", "emu", "zip", "--socket",
                             str(sock), "--exit-on-disconnect", "--set", "queues=3"],
                            env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with wz.open_engine(f"vfio-user:{sock}") as eng:
            assert eng.source.qp_num == 3 and eng.backend == "vfio-user"
            assert zlib.decompress(eng.compress(b"served " * 100, wbits=31), 31) == \
                b"served " * 100
        assert proc.wait(timeout=20) == 0  # exits when its client disconnects
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("wait", ["auto", "spin"])
def test_after_a_slow_wait_the_next_sleeps_at_once(wait: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait that outlasted Lane.SLOW_S makes the next one sleep on the interrupt without
    spinning first (a device sharing the CPU, like the model's workers, needs the core the
    spin would take); wait="spin" never sleeps. Deterministic: `done()` turns true on its
    third call, which a spinning wait reaches without sleeping and a slow one only after."""
    from warpdrive.devices.zip.lane import Lane

    with wz.open_engine("emu", wait=wait) as eng:
        lane = eng.lanes[COMPRESS]
        s = eng.session("compress")
        monkeypatch.setattr(Lane, "SLOW_S", 0.0)  # every wait counts as slow
        s.submit(b"slow " * 1000)
        s.drain()
        assert lane.slow
        blocks: list[int] = []
        real_block = eng.source.block

        def block(q: QmQueue, timeout: float, seen: int | None = None) -> None:
            blocks.append(calls[0])
            real_block(q, min(timeout, 0.05), seen)

        monkeypatch.setattr(eng.source, "block", block)
        job = s.submit(b"next " * 1000)
        s.flush()
        calls = [0]

        def done() -> bool:
            calls[0] += 1
            return calls[0] >= 3

        # The job stays in flight for this wait whatever the model's speed: a job reaped early
        # (the client descheduled after the flush) would leave nothing to wait for, and one
        # seen done by the look after the re-arm would rightly not be slept on.
        with monkeypatch.context() as m:
            m.setattr(lane, "reap", lambda: 0)
            m.setattr(lane.q, "completed", lambda n=1: False)
            lane.wait_until(done)
        assert blocks == ([2] if wait == "auto" else [])
        lane.wait_until(lambda: job.done)
        assert job.result()  # the stream's next piece (it continues the first job's stream)
        monkeypatch.setattr(Lane, "SLOW_S", float("inf"))
        s.submit(b"fast " * 10)
        s.drain()
        assert not lane.slow


def trapped_engine(dev: warpdrive.Device, **kw: object) -> tuple[QmDevice, wz.ZipEngine]:
    qm = QmDevice(dev, hw.ZIP, doorbell="message")
    return qm, wz.ZipEngine(qm, wait="block", **kw)  # type: ignore[arg-type]


def test_an_event_queue_overflow_is_reported_and_recovered(caplog) -> None:
    """docs/research/hisi-qm-zip.md §7.2, end to end on our own QM client: a waiter that
    re-arms its queue's interrupt and then finds its completion without sleeping leaves the EQE
    unacknowledged; driven past the EQ's depth (the ack every waiter's tick gives a half-full
    EQ is bypassed: no tick runs when the job is already done), the model raises an
    EQ-overflow AEQE. The driver reloads the EQ on the next tick, logs one line, and the engine
    goes on: later waits sleep on the interrupt and are woken by it. (The AEQ is looked at on
    a waiter's refresh ticks: a job done before the first tick needs nothing from it.)"""
    with warpdrive.open("emu:zip", model_options={"doorbells": "trap"}) as dev:
        qm, eng = trapped_engine(dev)
        s = eng.session("compress")
        q = eng.lanes[COMPRESS].q
        data = b"event " * 100
        for _ in range(qm.caps.eq_depth):
            s.submit(data)
            while not q.completed():
                pass
            q.ring_cq(rearm=True)  # re-armed with a CQE beyond the head: an EQE at once
            (j,) = s.drain()
            assert zlib.decompress(j.result()) == data
        _, stats = model_view(dev)
        assert stats["aeqes"] == 1 and stats["eqes"] == qm.caps.eq_depth - 1
        assert qm.eq_overflows == 0  # not looked at yet
        with caplog.at_level("WARNING", logger="warpdrive.qm"):
            q.watchdog()  # a waiter's refresh tick (a wait that outlasts REFRESH_S)
        assert qm.eq_overflows == 1, model_view(dev)[1]
        big = b"overflow recovered " * 50000
        assert any("EQ overflow" in r.getMessage() for r in caplog.records), caplog.text
        _, before = model_view(dev)
        for _ in range(3):
            assert zlib.decompress(eng.compress(big)) == big
        _, after = model_view(dev)
        assert after["eqes"] > before["eqes"] and after["msis"] > before["msis"], (before, after)
        assert after["aeqes"] == 1
        eng.close()


def test_a_completion_queue_overflow_stops_the_queue_with_a_clear_error() -> None:
    """§7.2: CQ doorbells suppressed (a driver bug, simulated), the function's view of the CQ
    fills and the next job overflows it: the model stops the queue and posts a CQ-overflow
    AEQE; the waiter gets QueueStoppedError naming it within a tick, never a hang or a
    timeout, and closing the engine still works (the function is reset)."""
    with warpdrive.open("emu:zip", model_options={"doorbells": "trap"}) as dev:
        qm, eng = trapped_engine(dev, depth=16, timeout=20.0)
        s = eng.session("compress")
        q = eng.lanes[COMPRESS].q
        q.ring_cq = lambda rearm=False: None  # type: ignore[method-assign]
        data = b"cq " * 100
        for _ in range(15):  # the CQ takes depth - 1 CQEs the function never sees consumed
            s.submit(data)
            s.drain()
        t0 = time.monotonic()
        s.submit(data)
        with pytest.raises(QueueStoppedError, match="stopped by the device: CQ overflow"):
            s.drain()
        assert time.monotonic() - t0 < 5
        assert qm.faults == {q.qn: "CQ overflow"}
        _, stats = model_view(dev)
        assert stats["aeqes"] == 1 and stats["jobs"] == 15
        eng.close()


def test_overflows_injected_through_the_model_window_reach_the_driver() -> None:
    """The model's DBG_INJECT register (what the lab's Linux witness uses): an injected EQ
    overflow makes our driver reload its EQ at the next wait; an injected CQ overflow stops
    the queue it names, whose next wait says so."""
    from warpdrive.emu.models.zip import DBG_INJECT

    with warpdrive.open("emu:zip") as dev:
        qm, eng = trapped_engine(dev)
        data = b"inject " * 20000
        assert zlib.decompress(eng.compress(data)) == data
        q = eng.lanes[COMPRESS].q
        dev.region_write(DBG_BAR, DBG_INJECT, struct.pack("<I", qmr.AEQE_TYPE_EQ_OVERFLOW))
        q.watchdog()  # a waiter's refresh tick
        assert qm.eq_overflows == 1
        assert zlib.decompress(eng.compress(data)) == data
        dev.region_write(DBG_BAR, DBG_INJECT,
                         struct.pack("<I", qmr.AEQE_TYPE_CQ_OVERFLOW | q.qn << 16))
        with pytest.raises(QueueStoppedError, match="CQ overflow"):
            eng.compress(data)
        assert model_view(dev)[1]["aeqes"] == 2
        eng.close()


def test_closing_waits_for_a_waiter_servicing_events_and_stops_later_ones() -> None:
    """Any waiter's thread services the EQ/AEQ (`ack_events`, a refresh tick): the close marks
    the function closed under the same lock, so it waits for a waiter in there, and no waiter
    services events (doorbells, an EQ reload's mailbox) on a function being reset or on
    memory being freed."""
    with warpdrive.open("emu:zip", model_options={"doorbells": "trap"}) as dev:
        qm, eng = trapped_engine(dev)
        qm._events.acquire()  # a waiter inside ack_events
        closer = threading.Thread(target=qm.close)
        closer.start()
        closer.join(0.3)
        try:
            assert closer.is_alive()  # the close waits for that waiter
        finally:
            qm._events.release()
        closer.join(10)
        assert not closer.is_alive()
        assert qm.ack_events() == 0  # a late waiter: it touches neither function nor memory
        eng.close()
