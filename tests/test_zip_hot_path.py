"""The zero-copy hot path of a ZIP session (`prepare`, `submit_many`/`submit`, `poll_many`)
against the bundled model: prepared jobs reused over many laps of a small ring (slots, phase and
batches wrapping), batch boundaries (waiting for room, refusing more than the ring holds),
refusals that queue nothing, failures that reach only their own job inside a batch, and the
fork guard. Speed is measured by benchmarks/zip_bench.py --driver, never here."""

from __future__ import annotations

import os
import zlib

import pytest

import warpdrive.zip as wz
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.job import COMPRESS
from warpdrive.errors import DeviceBusyError, ForkedContextError, InvalidArgumentError

DEPTH = 16  # capacity 15: a few batches are many laps


def text(i: int, n: int = 3000) -> bytes:
    line = b"job %d: the quick brown fox jumps over the lazy dog\n" % i
    return (line * (n // len(line) + 1))[:n]


@pytest.fixture(scope="module")
def engine():
    eng = wz.open_engine("emu", depth=DEPTH, wait="spin", announce=False)
    yield eng
    eng.close()


@pytest.fixture
def session(engine):
    s = engine.session("compress", wbits=15)
    yield s
    s.close()


def prepared(s, count: int, offset: int = 0) -> list:
    jobs = []
    for i in range(count):
        data = text(offset + i)
        src = s.buffer(len(data))
        src.view[:len(data)] = data
        jobs.append(s.prepare(src, len(data)))
    return jobs


def check(jobs: list, offset: int = 0) -> None:
    for i, job in enumerate(jobs):
        assert zlib.decompress(bytes(job.output)) == text(offset + i), f"job {i}"


def drain_many(s, want: int) -> list:
    out: list = []
    while len(out) < want:
        s.poll_many(out)
        if len(out) < want and not s.in_flight:
            break
        if len(out) < want:
            out += s.wait()
    return out


def test_prepared_jobs_reused_over_many_laps_of_the_ring(session) -> None:
    q = session.lane.q
    assert q.sq_depth == DEPTH
    jobs = prepared(session, 6)  # 6 does not divide 16: batches straddle the ring's end
    for _ in range(40):
        session.submit_many(jobs)
        done = drain_many(session, 6)
        assert sorted(map(id, done)) == sorted(map(id, jobs))
        assert all(j.done and j.error is None for j in jobs)
        check(jobs)
    assert q.outstanding == 0 and session.in_flight == 0
    assert q.jobs == [None] * DEPTH and q.owners == [None] * DEPTH


def test_single_submissions_and_batches_mix(session) -> None:
    jobs = prepared(session, 5)
    for round_ in range(30):
        if round_ % 2:
            for j in jobs:
                session.submit(j, flush=j is jobs[-1])
        else:
            session.submit_many(jobs[:3])
            session.submit_many(jobs[3:], flush=False)
            session.flush()
        assert len(session.drain()) == 5
        check(jobs)


def test_a_batch_waits_for_room_and_one_larger_than_the_ring_is_refused(session) -> None:
    q = session.lane.q
    jobs = prepared(session, q.capacity + 1)
    session.submit_many(jobs[:10])
    session.submit_many(jobs[10:q.capacity])  # fits once earlier jobs are reaped
    assert len(session.drain()) == q.capacity
    with pytest.raises(wz.ZipError, match="cannot be in flight at once"):
        session.submit_many(jobs)
    assert q.outstanding == 0
    session.submit_many(jobs[:q.capacity])  # nothing was marked in flight by the refusal
    assert len(session.drain()) == q.capacity
    check(jobs[:q.capacity])


def test_a_refused_batch_queues_nothing(engine, session) -> None:
    q = session.lane.q
    jobs = prepared(session, 4)
    other = engine.session("compress")
    try:
        foreign = prepared(other, 1)[0]
        outstanding = q.outstanding
        with pytest.raises(InvalidArgumentError, match="prepared by this session"):
            session.submit_many([*jobs[:2], foreign, *jobs[2:]])
        with pytest.raises(InvalidArgumentError, match="twice"):
            session.submit_many([jobs[0], jobs[1], jobs[0]])
        assert q.outstanding == outstanding and session.in_flight == 0
        session.submit(jobs[3], flush=False)
        with pytest.raises(InvalidArgumentError, match="in flight"):
            session.submit_many(jobs)
        with pytest.raises(InvalidArgumentError, match="in flight"):
            session.submit(jobs[3])
        session.submit_many(jobs[:3])  # the refused ones are still good
        assert len(session.drain()) == 4
        check(jobs)
    finally:
        other.close()


def test_a_failed_job_in_a_batch_fails_alone(engine, session) -> None:
    jobs = prepared(session, 8)
    engine.source.dma.unmap(jobs[5].src)  # the device can no longer reach one source
    session.submit_many(jobs)
    assert len(session.drain()) == 8
    for i, job in enumerate(jobs):
        if i == 5:
            with pytest.raises(wz.ZipDeviceError, match="DMA fault"):
                job.output  # noqa: B018
        else:
            assert zlib.decompress(bytes(job.output)) == text(i)
    jobs[5].src.close()


def test_a_completion_whose_sqe_lost_its_tag_fails_that_job(session) -> None:
    q = session.lane.q
    jobs = prepared(session, 8)
    session.submit_many(jobs, flush=False)  # written, not rung: the device has not read them
    slot = next(i for i, j in enumerate(q.jobs) if j is jobs[3])
    tag_dw = jobs[3].tag_dw
    q.sq32[slot * hw.SQE_DWORDS + tag_dw] ^= 0x5A5A
    session.flush()
    assert len(session.drain()) == 8
    with pytest.raises(wz.ZipError, match="tag mismatch"):
        jobs[3].output  # noqa: B018
    check(jobs[:3])
    check(jobs[4:], offset=4)


def test_poll_many_appends_to_the_callers_list(session) -> None:
    jobs = prepared(session, 4)
    session.submit_many(jobs)
    out: list = ["mine"]
    total = 0
    while total < 4:
        total += session.poll_many(out)
    assert out[0] == "mine" and sorted(map(id, out[1:])) == sorted(map(id, jobs))
    assert session.poll_many(out) == 0 and len(out) == 5


def test_forked_child_cannot_submit_or_poll(engine, session) -> None:
    jobs = prepared(session, 3)
    session.submit_many(jobs)
    session.drain()
    pid = os.fork()
    if pid == 0:  # child: the rings are not mapped here; every entry point says why
        code = 0
        try:
            for attempt in (lambda: session.submit_many(jobs), lambda: session.submit(jobs[0]),
                            lambda: session.submit(b"bytes")):
                try:
                    attempt()
                    code |= 1
                except ForkedContextError:
                    pass
            if session.poll_many([]) != 0 or engine.lanes[COMPRESS].current is not None:
                code |= 2
        except BaseException:
            code |= 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    session.submit_many(jobs)  # the parent's session is untouched
    assert len(session.drain()) == 3
    check(jobs)


def test_the_null_executor_completes_jobs_without_doing_them() -> None:
    """What `zip_bench.py --driver` runs against: every job succeeds at once, its whole input
    consumed and nothing produced (the output is the header the driver wrote)."""
    with wz.open_engine("emu", wait="spin", announce=False,
                 model_options={"executor": "null"}) as eng:
        s = eng.session("compress", wbits=15)
        jobs = prepared(s, 40)
        for _ in range(3):
            s.submit_many(jobs)
            assert len(drain_many(s, 40)) == 40
        for i, job in enumerate(jobs):
            assert (job.status, job.consumed, job.produced) == (0, len(text(i)), 0)
            assert len(bytes(job.output)) == 2  # the zlib header, and nothing else
        s.close()
    with pytest.raises(InvalidArgumentError, match="executor"):
        wz.open_engine("emu", announce=False, model_options={"executor": "fast"})


def test_sessions_with_queues_of_their_own_driven_from_one_thread() -> None:
    with wz.open_engine("emu", wait="spin", announce=False, model_options={"queues": "4"}) as eng:
        sessions = [eng.session("compress", own_queue=True) for _ in range(3)]
        batches = [prepared(s, 10, offset=10 * i) for i, s in enumerate(sessions)]
        qns = {s.lane.q.qn for s in sessions}
        assert len(qns) == 3  # three queue pairs of the function
        for _ in range(5):
            for s, jobs in zip(sessions, batches):
                s.submit_many(jobs)
            done: list = []
            while len(done) < 30:
                for s in sessions:  # one thread polls them all
                    s.poll_many(done)
            assert len(done) == 30
            for i, jobs in enumerate(batches):
                check(jobs, offset=10 * i)
        shared = eng.session("compress")  # the engine's own queue is the fourth
        assert zlib.decompress(shared.submit(b"shared").owner.drain()[0].result()) == b"shared"
        extra = eng.session("compress", own_queue=True)
        with pytest.raises(DeviceBusyError, match="in use"):
            extra.submit(b"no queue left")
        sessions[0].close()  # gives its queue back
        assert zlib.decompress(extra.submit(b"now").owner.drain()[0].result()) == b"now"
