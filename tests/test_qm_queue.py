"""The QM queue's bookkeeping on the hot path (`post_many`, `write_sqes`, `harvest`, `completed`)
over plain memory, with the test writing CQEs as a device would: out-of-order completions,
slots that hold no job, slots named twice, wraparound of the rings and of the phase.

The queue is the real class; only the device is played by the test (the doorbell is a mapped
8-byte cell nobody reads). End-to-end behaviour against the device model is in
tests/test_zip_hot_path.py."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

import pytest

from warpdrive.devices.hisi_qm import regs as hw
from warpdrive.devices.hisi_qm.queue import QmQueue
from warpdrive.errors import DeviceBusyError, DeviceError
from warpdrive.mmio import Doorbell

DEPTH = 8


class Device:
    """Writes CQEs the way the QM does: body, then the phase word; phase flips every lap."""

    def __init__(self, q: QmQueue) -> None:
        self.q = q
        self.cq = q.mem[q.layout.cq_offset:q.layout.cq_offset + hw.CQE_SIZE * q.cq_depth]
        self.tail = 0
        self.phase = 1

    def complete(self, *slots: int) -> None:
        for slot in slots:
            hw.CQE.pack_into(self.cq, self.tail * hw.CQE_SIZE, 0, 0, 0, slot, self.q.qn, 0,
                             self.phase)
            self.tail += 1
            if self.tail == self.q.cq_depth:
                self.tail, self.phase = 0, self.phase ^ 1


@pytest.fixture
def queue():
    layout = hw.QueueLayout(DEPTH, DEPTH)
    mem = bytearray(layout.size)
    cell = ctypes.c_uint64()
    bell = Doorbell(0x1000, 8, ctypes.addressof(cell), None, "test")
    q = QmQueue(name="test/q0", qn=0, mem=memoryview(mem), layout=layout, doorbell=bell)
    yield q, Device(q), cell
    q.release()


def sqe(tag: int) -> bytes:
    return struct.pack("<32I", *range(tag, tag + 32))


def test_batch_slots_wrap_at_the_ring_end(queue) -> None:
    q, dev, cell = queue
    owner = object()
    for round_ in range(5):  # 3 jobs a round in an 8-slot ring: batches straddle the end
        jobs = [object() for _ in range(3)]
        first = q.post_many(jobs, owner)
        q.write_sqes(first, b"".join(sqe(100 * round_ + i) for i in range(3)))
        q.ring()
        assert hw.doorbell_decode_v2(cell.value)[2] == q.tail == (first + 3) % DEPTH
        for i in range(3):
            off = (first + i) % DEPTH * 128
            assert bytes(q.sq[off:off + 128]) == sqe(100 * round_ + i)
        dev.complete(*((first + i) % DEPTH for i in range(3)))
        got: list[object] = []
        while True:
            s0, slots, done, who = q.harvest()
            if not done:
                break
            assert who is owner
            assert s0 == (slots[0] if slots == list(range(slots[0], slots[0] + len(slots)))
                          else -1)
            got += done
        assert got == jobs
        assert q.outstanding == 0 and q.jobs == [None] * DEPTH and q.owners == [None] * DEPTH


def test_out_of_order_completions_come_back_in_cqe_order(queue) -> None:
    q, dev, _ = queue
    a, b = object(), object()
    jobs = [object() for _ in range(4)]
    first = q.post_many(jobs[:2], a)
    q.post_many(jobs[2:], b)
    q.ring()
    dev.complete(first + 2, first, first + 3, first + 1)
    s0, slots, done, who = q.harvest()
    assert (s0, slots, who) == (-1, [first + 2, first, first + 3, first + 1], None)
    assert done == [jobs[2], jobs[0], jobs[3], jobs[1]]
    assert q.outstanding == 0


def test_a_cqe_naming_an_empty_slot_takes_nothing(queue) -> None:
    q, dev, _ = queue
    jobs = [object(), object()]
    q.post_many(jobs)
    q.ring()
    dev.complete(0, 5)  # slot 5 holds no job
    with pytest.raises(DeviceError, match="names SQ slot 5, which holds no job"):
        q.harvest()
    assert q.outstanding == 2 and q.jobs[:2] == jobs and q.cq_head == 0


def test_a_slot_named_twice_takes_nothing(queue) -> None:
    q, dev, _ = queue
    jobs = [object(), object(), object()]
    q.post_many(jobs)
    q.ring()
    dev.complete(1, 0, 1)
    with pytest.raises(DeviceError, match="slot 1"):
        q.harvest()
    assert q.outstanding == 3 and q.jobs[:3] == jobs


def test_only_the_ready_prefix_is_taken(queue) -> None:
    q, dev, _ = queue
    jobs = [object() for _ in range(5)]
    q.post_many(jobs)
    q.ring()
    dev.complete(0, 1)
    assert q.completed(2) and not q.completed(3)
    assert q.harvest()[2] == jobs[:2]
    assert q.harvest()[2] == []
    dev.complete(2, 3, 4)
    assert q.harvest()[2] == jobs[2:]


def test_completed_n_looks_across_the_phase_wrap(queue) -> None:
    q, dev, _ = queue
    for _ in range(6):  # move the heads to 6
        q.post_many([object()])
        dev.complete(q.tail - 1)
        assert len(q.harvest()[2]) == 1
    jobs = [object() for _ in range(4)]
    first = q.post_many(jobs)
    assert first == 6
    dev.complete(6, 7, 0)  # the third CQE is in the next lap, with the other phase
    assert q.completed(3) and not q.completed(4)
    assert q.harvest()[2] == jobs[:2]  # stops at the ring's end ...
    assert q.harvest()[2] == jobs[2:3]  # ... and goes on after the wrap, phase flipped


def test_a_batch_that_does_not_fit_reserves_nothing(queue) -> None:
    q, _, _ = queue
    q.post_many([object() for _ in range(5)])
    with pytest.raises(DeviceBusyError):
        q.post_many([object() for _ in range(3)])  # capacity is depth - 1 = 7
    assert q.outstanding == 5 and q.tail == 5 and q.jobs[5:] == [None] * 3


def test_take_one_takes_a_few_of_the_owners_jobs_and_leaves_the_rest(queue) -> None:
    """`take_one`: the head CQE when it names a job of the owner and fewer than BULK wait,
    across the ring's end and the phase flip; a run of BULK, another owner's job or a CQE
    naming an empty slot are left (untouched) for `harvest`."""
    q, dev, _ = queue
    me, other = object(), object()
    assert q.take_one(me) is None  # nothing in flight
    for lap in range(3):  # 8-entry rings: the heads wrap and the phase flips
        jobs = [object(), object()]
        for j in jobs:
            q.post(j, me)
        q.ring()
        assert q.take_one(me) is None  # nothing completed yet
        dev.complete((q.tail - 2) % DEPTH, (q.tail - 1) % DEPTH)
        got = [q.take_one(me), q.take_one(me), q.take_one(me)]
        assert got == [*jobs, None], lap
        assert q.taken_slot == (q.tail - 1) % DEPTH and q.outstanding == 0
    j = object()
    q.post(j, other)
    dev.complete((q.tail - 1) % DEPTH)
    head = q.cq_head
    assert q.take_one(me) is None and q.cq_head == head  # not ours: the lane hands it over
    assert q.harvest()[2] == [j]
    jobs = [object() for _ in range(QmQueue.BULK)]
    first = q.post_many(jobs, me)
    dev.complete(*((first + i) % DEPTH for i in range(QmQueue.BULK)))
    if q.cq_head + QmQueue.BULK <= DEPTH:
        assert q.take_one(me) is None  # a run: harvest's columns
    got = []
    while len(got) < len(jobs):
        got += q.harvest()[2]
    assert got == jobs
    q.post(object(), me)
    dev.complete((q.tail + 3) % DEPTH)  # an empty slot
    assert q.take_one(me) is None and q.outstanding == 1
    with pytest.raises(DeviceError, match="holds no job"):
        q.harvest()


class _Trap:
    """A trapped doorbell register that keeps what the device learns: the CQ head announced
    (and calls `on_cq` after each CQ doorbell)."""

    def __init__(self) -> None:
        self.cq_head = 0
        self.cq_doorbells: list[tuple[int, int]] = []  # (head, priority)
        self.on_cq: Callable[[], None] = lambda: None

    def write(self, _offset: int, _width: int, value: int) -> None:
        _qn, cmd, index, prio = hw.doorbell_decode_v2(value)
        if cmd == hw.QM_DB_CMD_CQ:
            self.cq_head = index
            self.cq_doorbells.append((index, prio))
            self.on_cq()


@pytest.mark.parametrize("lazy_cq", [False, True])
def test_lagging_cq_doorbells_never_let_the_device_fill_the_cq(lazy_cq: bool) -> None:
    """`take_one` (on every queue) and `harvest` (with `lazy_cq`) leave the CQ head unsent for
    up to half the ring; the submit paths send it first when the jobs in flight plus the
    unsent CQEs could reach the ring: as the device knows the head, a CQE it writes never
    lands on one not yet consumed (the real QM reports CQ overflow). Random mixes of every
    submit and reap path, rings of 2..16, the device completing what was rung at random."""
    import random

    for seed in range(200):
        rng = random.Random(seed)
        depth = rng.choice((2, 4, 8, 16))
        layout = hw.QueueLayout(depth, depth)
        trap = _Trap()
        bell = Doorbell(0x1000, 8, None, trap, "test")  # type: ignore[arg-type]
        q = QmQueue(name="test/q0", qn=0, mem=memoryview(bytearray(layout.size)),
                    layout=layout, doorbell=bell, irq=not lazy_cq, lazy_cq=lazy_cq)
        dev = Device(q)
        me, done_upto = object(), 0  # done_upto: SQ slots the device has completed, in order
        for _ in range(300):
            op = rng.random()
            if op < 0.3:
                q.submit_one(object(), me, bytes(q.sqe_size))
            elif op < 0.45 and q.space:
                q.post_many([object()] * rng.randint(1, q.space), me)
                q.ring()
            elif op < 0.55 and q.space:
                q.post(object(), me)
                q.ring()
            elif op < 0.75:
                for _ in range(rng.randint(0, (q.rung_tail - done_upto) % depth)):
                    # the device's view: CQEs written and not announced consumed
                    assert (dev.tail - trap.cq_head) % depth < depth - 1, seed
                    dev.complete(done_upto)
                    done_upto = (done_upto + 1) % depth
            elif op < 0.9:
                while q.take_one(me) is not None:
                    pass
            else:
                q.reap()
            assert q.outstanding + q.cq_lag <= q.capacity, seed
        # Polling never re-arms the completion interrupt (priority 1): each re-arm lets the
        # function post an EQE, which nobody who only polls acknowledges.
        assert {prio for _head, prio in trap.cq_doorbells} <= {0}, seed
        q.release()


class _Job:
    def __init__(self, owner: object) -> None:
        self.owner, self.done, self.slot_off = owner, False, -1


class _Owner:
    def on_complete(self, job: _Job) -> None:
        job.done = True


def _two_jobs(irq: bool, lazy_cq: bool = False) -> tuple[QmQueue, _Trap, Device, _Owner, _Job,
                                                         _Job]:
    """A queue on a trapped doorbell with jobs a (slot 0, completed) and b (slot 1) rung."""
    layout = hw.QueueLayout(DEPTH, DEPTH)
    trap = _Trap()
    bell = Doorbell(0x1000, 8, None, trap, "test")  # type: ignore[arg-type]
    q = QmQueue(name="test/q0", qn=0, mem=memoryview(bytearray(layout.size)), layout=layout,
                doorbell=bell, irq=irq, lazy_cq=lazy_cq)
    dev = Device(q)
    owner = _Owner()
    a, b = _Job(owner), _Job(owner)
    q.post(a, owner)
    q.post(b, owner)
    q.ring()
    dev.complete(0)
    return q, trap, dev, owner, a, b


def _wait_in_lane(q: QmQueue, done: Callable[[], bool],
                  block: Callable[[QmQueue, float], None]) -> None:
    """`Lane.wait_until` on `q`, sleeping (at once: no spin) through `block`."""
    from types import SimpleNamespace

    from warpdrive.devices.zip.lane import Lane

    source = SimpleNamespace(block=lambda q_, remaining, _seen: block(q_, remaining),
                             wakeups=lambda _q: 0)
    lane = Lane(SimpleNamespace(source=source, spin_s=0.0, timeout=5.0),
                0)  # type: ignore[arg-type]
    lane.current = q
    lane.wait_until(done)


@pytest.mark.parametrize("done_at_rearm", [False, True])
def test_a_waiter_sends_the_lagging_cq_head_before_it_sleeps(done_at_rearm: bool) -> None:
    """With completion interrupts, the CQ doorbell (priority 1) re-arms the queue's interrupt,
    and `take_one` leaves it unsent: `Lane._wait` sends it before it sleeps on the interrupt,
    so it never waits for one the device was not armed to raise; and after that re-arm it
    looks once more, as a job done just before it may raise none (`done_at_rearm`)."""
    q, trap, dev, owner, a, b = _two_jobs(irq=True)
    assert q.take_one(owner) is a and q.cq_lag == 1 and not trap.cq_doorbells
    if done_at_rearm:  # b completes as the re-arm reaches the device: no interrupt
        trap.on_cq = lambda: dev.complete(1) if dev.tail == 1 else None
    slept: list[tuple[int, list[tuple[int, int]]]] = []

    def block(q_: QmQueue, _remaining: float) -> None:
        slept.append((q_.cq_lag, list(trap.cq_doorbells)))
        dev.complete(1)  # the job, and its interrupt

    _wait_in_lane(q, lambda: b.done, block)
    assert b.done
    assert slept == ([] if done_at_rearm else [(0, [(1, 1)])])
    q.release()


@pytest.mark.parametrize("irq", [True, False])
def test_only_a_waiter_about_to_sleep_rearms_the_interrupt(irq: bool) -> None:
    """A reap announces the CQ head with priority 0, so the CQ head the device knows is
    current; a waiter that then sleeps on the interrupt still re-arms it first (priority 1,
    docs/research/hisi-qm-zip.md §7.1): under uacce the kernel never does, and no other
    doorbell does here. A queue without completion interrupts never sends priority 1."""
    q, trap, dev, _owner, a, b = _two_jobs(irq=irq, lazy_cq=not irq)
    assert q.reap() == [a] and q.cq_lag == (0 if irq else 1)
    slept: list[list[tuple[int, int]]] = []

    def block(_q: QmQueue, _remaining: float) -> None:
        slept.append(list(trap.cq_doorbells))
        dev.complete(1)

    _wait_in_lane(q, lambda: b.done, block)
    assert b.done
    # irq: the reap's head (priority 0), then the re-arm before the sleep (priority 1);
    # without interrupts the lagging head goes out before the sleep, with priority 0.
    assert slept == [[(1, 0), (1, 1)] if irq else [(1, 0)]]
    q.release()
