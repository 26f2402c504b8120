"""The broker's fast paths give the client exactly what its function's general path gives.

`VirtualZip.poll` takes a moved doorbell word straight to the queue it names when nothing else can
have made work (`VirtualZip._doorbell`); completions post their CQEs per stretch on the kept CQ
view and signal the queue once after the pass (`VirtualZip._complete`, `_flush`). Two functions
(`tests.brokerutil.FunctionRig`, each on its own broker and model) are driven through the same
steps, one as it runs and one forced through the general path (`ZipModel.poll` then
`QmFunction.process` on every pass): the client's rings, event queue, queue state and counters
must come out byte for byte the same after every step."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest

from rigs.broker import SQE, FunctionRig, sqe_words
from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.zip import hw

DEPTH = 64  # small: the steps wrap the rings


def settle(rig: FunctionRig, general: bool) -> None:
    """Server passes until nothing is in flight and no SQE waits (the device is another
    process: its completions take a while)."""
    for _ in range(200_000):
        if general:
            rig.model._recheck = True  # what a trapped write or a backlog forces
        rig.poll()
        q = rig.model._qm().queues[0]
        if not any(h.q.outstanding for h in rig.broker.hw) and q.head == q.tail:
            rig.poll()
            return
    raise AssertionError("the function did not settle")


def state(rig: FunctionRig) -> tuple[object, ...]:
    f = rig.model._qm()
    q = f.queues[0]
    c = rig.model.client
    mem = rig.mem
    return (bytes(mem[rig.SQ:rig.SQ + DEPTH * 128]), bytes(mem[rig.CQ:rig.CQ + DEPTH * 16]),
            bytes(mem[rig.EQ:rig.EQ + rig.EQ_DEPTH * 4]),
            (q.head, q.tail, q.cq_head, q.cq_tail, q.cq_phase, q.completed, q.eqe_posted_at),
            (f.eq.tail, f.eq.head, f.eq_pending, list(f.eq.posted)), dict(f.stats),
            (c.submitted, c.completed, c.refused))


@pytest.fixture(params=[False, True], ids=["polled", "irq"])
def rigs(request: pytest.FixtureRequest) -> Iterator[tuple[FunctionRig, FunctionRig]]:
    fast = FunctionRig(depth=DEPTH, irq=request.param, inflight=6)
    try:
        general = FunctionRig(depth=DEPTH, irq=request.param, inflight=6)
    except BaseException:
        fast.close()
        raise
    try:
        yield fast, general
    finally:
        fast.close()
        general.close()


BAD = SQE.pack(*sqe_words(FunctionRig.IOVA + FunctionRig.SRC, FunctionRig.IOVA + FunctionRig.DST,
                          dw9=0xFF))  # not a request type: refused, completed at once
OUTSIDE = SQE.pack(*sqe_words(0x7000_0000, FunctionRig.IOVA + FunctionRig.DST))  # unmapped


def eq_doorbell(rig: FunctionRig, index: int) -> None:
    """The driver consumed EQEs up to `index` (a trapped write, as the EQ doorbell always is)."""
    rig.model.region_write(qm.QM_BAR, qm.QM_DOORBELL_EQ_AEQ_BASE_V2,
                           struct.pack("<Q", qm.doorbell_v2(0, qm.QM_DB_CMD_EQ, index)))


STEPS: list[tuple[str, Callable[[FunctionRig], None]]] = [
    ("one SQE", lambda r: (r.write(1), r.ring())),
    ("a run of 8 (more than the share of 6: the rest wait)", lambda r: (r.write(8), r.ring())),
    ("good, refused and unmapped SQEs in one run", lambda r: (
        r.write(3), r.write(1, BAD), r.write(2), r.write(1, OUTSIDE), r.write(3), r.ring())),
    ("the CQ doorbell", lambda r: (r.reap(DEPTH), r.ack())),
    ("a doorbell naming a queue the function does not have",
     lambda r: r.ring(qm.doorbell_v2(5, qm.QM_DB_CMD_SQ, 3))),
    ("an SQ index past the ring", lambda r: r.ring(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, 2000))),
    ("a queue that never started", lambda r: r.ring(qm.doorbell_v2(1, qm.QM_DB_CMD_SQ, 4))),
    ("the EQ doorbell: the queue may be signalled again", lambda r: eq_doorbell(r, 1)),
    ("40 SQEs", lambda r: (r.reap(DEPTH), r.ack(), r.write(40), r.ring())),
    ("runs across the ring's end", lambda r: (r.reap(DEPTH), r.ack(), r.write(30), r.ring())),
    ("the same doorbell value again (nothing new)", lambda r: r.ring()),
    ("5 SQEs", lambda r: (r.write(5), r.ring())),
    ("a CQ doorbell then the SQ doorbell stored again (the driver's re-store)", lambda r: (
        r.reap(DEPTH), r.ack(), r.ring())),
]


def test_the_doorbell_fast_path_matches_the_general_path(
        rigs: tuple[FunctionRig, FunctionRig]) -> None:
    fast, general = rigs
    taken = []
    real = fast.model._doorbell
    fast.model._doorbell = lambda v: taken.append(v) or real(v)  # type: ignore[method-assign]
    for what, step in STEPS:
        for rig, forced in ((fast, False), (general, True)):
            step(rig)
            settle(rig, forced)
        assert state(fast) == state(general), what
    assert len(taken) >= 8  # the fast path served most steps (the general rig none)
    c = fast.model.client
    assert (c.refused, c.completed) == (2, 1 + 8 + 8 + 40 + 30 + 5)


def test_one_eqe_per_pass_and_again_only_after_the_driver_consumed_it() -> None:
    rig = FunctionRig(depth=DEPTH, irq=True)
    try:
        f = rig.model._qm()
        for _ in range(3):  # three batches, several passes: one EQE until it is consumed
            rig.write(8)
            rig.ring()
            settle(rig, False)
        assert f.stats["eqes"] == 1 and list(f.eq.posted) == [0]
        eqe = struct.unpack_from("<I", rig.mem, rig.EQ)[0]
        assert eqe & 0xFFFF == 0 and eqe >> 16 & 1 == 1  # queue 0, phase 1
        eq_doorbell(rig, 1)  # consumed; the queue completed jobs since it went out: at once
        assert f.stats["eqes"] == 2
        eq_doorbell(rig, 2)  # consumed again, nothing completed since: no EQE
        assert f.stats["eqes"] == 2
        rig.write(1)
        rig.ring()
        settle(rig, False)
        assert f.stats["eqes"] == 3
        assert rig.reap(DEPTH) == 25
        status = struct.unpack_from("<I", rig.mem, rig.SQ + 24 * 128 + 4 * hw.DW_STATUS)[0]
        assert status & hw.STATUS_MASK == hw.STATUS_OK
    finally:
        rig.close()
