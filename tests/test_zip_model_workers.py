"""The ZIP model's worker threads (issue 11, "an embedded default worth using": several jobs
worked at once, zlib releasing the GIL). Stateless jobs over 64 KiB run on the workers; small
jobs and stream jobs run on the model's thread after the jobs before them; completions come
back in submission order per queue. Checked through the real driver over vfio-user."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future

import psutil
import pytest

import warpdrive.zip as wz
from rigs.zip_model import CQ, SQ, model_client
from tests.ziputil import sample
from warpdrive.backends.vfiouser.wire import Message
from warpdrive.devices.hisi_qm import regs as qm
from warpdrive.devices.zip import hw
from warpdrive.devices.zip.sqe import Format, SqeTemplate
from warpdrive.emu.function import Function
from warpdrive.emu.models.zip import ThreadedJobs
from warpdrive.errors import InvalidArgumentError
from warpdrive.uapi import pci_regs
from warpdrive.uapi import vfio_user as P
from warpdrive.uapi.vfio import VFIO_PCI_CONFIG_REGION_INDEX


def _model(eng: wz.ZipEngine) -> psutil.Process:
    return psutil.Process(eng.source.dev.emulator.proc.pid)  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_big_small_and_stream_jobs_mixed_on_one_queue(workers: str) -> None:
    big = [sample(200_000 + 9_000 * i, seed=i) for i in range(6)]
    small = [sample(3_000, seed=100 + i) for i in range(6)]
    with wz.open_engine("emu", wait="spin", announce=False,
                        model_options={"workers": workers}) as eng:
        s = eng.session("compress", wbits=31)
        order = [x for pair in zip(big, small) for x in pair]
        jobs = [s.submit(data, flush=False) for data in order]
        c = wz.compressobj(device=eng, chunk_size=100_000)  # stream jobs on the same queue
        s.flush()
        streamed = c.compress(big[0] * 2) + c.flush()
        done = s.drain()
        assert {id(j) for j in done} == {id(j) for j in jobs}
        outs = [j.result() for j in jobs]
        assert [zlib.decompress(o, 31) for o in outs] == order
        assert zlib.decompress(streamed) == big[0] * 2
        # the same bytes whatever the number of workers (zlib is deterministic): the job
        # again, and the one-shot call (pieces on the workers) as zlib reads it
        again = s.submit(big[0])
        s.drain()
        assert again.result() == outs[0]
        assert zlib.decompress(wz.compress(big[0], wbits=31, device=eng), 31) == big[0]
        d = eng.session("decompress", wbits=31)
        back = [d.submit(o) for o in outs]
        d.drain()
        assert [j.result() for j in back] == order
        if workers == "2":
            assert _model(eng).num_threads() >= 3  # the model's thread and two workers
        s.close()
        d.close()


def test_workers_option_is_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="workers"):
        wz.open_engine("emu", announce=False, model_options={"workers": "0"})


def _jobs_with(futures: list[Future[object]], workers: int = 2) -> ThreadedJobs:
    """A ThreadedJobs whose queue 0 has these futures in flight (no DMA is touched: only the
    waiting is exercised)."""
    jobs = ThreadedJobs(None, workers=workers)  # type: ignore[arg-type]
    view = memoryview(b"")
    jobs.inflight[0] = deque((None, i, (), f, view, view)  # type: ignore[misc]
                             for i, f in enumerate(futures))
    for f in futures:
        jobs.watch(f)  # (as a job handed to a worker is)
    return jobs


def test_model_thread_sleeps_while_every_worker_is_busy() -> None:
    """With a job on every worker, nothing a doorbell brings could start sooner: the model's
    thread sleeps until one finishes (bounded), not every poll_idle_s. Before, a later job
    finishing first kept it spinning until the oldest was done, on a core the workers need."""
    busy: list[Future[object]] = [Future() for _ in range(3)]
    jobs = _jobs_with(busy)
    jobs.SATURATED_WAIT_S = 0.2
    t0 = time.monotonic()
    jobs._wait_for_change(0.0005)
    assert time.monotonic() - t0 >= 0.19  # slept the bound, not 0.5 ms
    # a later job done first: the two others are still on the workers, still saturated
    busy[1].set_result(None)
    t0 = time.monotonic()
    jobs._wait_for_change(0.0005)
    assert time.monotonic() - t0 >= 0.19
    # a finishing worker ends the sleep at once (a long bound that must not be reached)
    jobs.SATURATED_WAIT_S = 30.0
    threading.Timer(0.05, busy[2].set_result, (None,)).start()
    t0 = time.monotonic()
    jobs._wait_for_change(0.0005)
    assert time.monotonic() - t0 < 20.0
    # one job left, a worker idle: a short look (a doorbell may bring it work)
    t0 = time.monotonic()
    jobs._wait_for_change(0.0005)
    assert time.monotonic() - t0 < 20.0
    # the oldest done: no sleep at all (it can be posted)
    busy[0].set_result(None)
    t0 = time.monotonic()
    jobs._wait_for_change(30.0)
    assert time.monotonic() - t0 < 20.0
    jobs.close()


def test_a_message_ends_the_model_threads_sleep_while_every_worker_is_busy() -> None:
    """While every worker is busy the model's thread sleeps until a job ends, but a client's
    message or connection (the server's epoll fd readable: `messages_fd`) ends it too: a
    request (a DMA map, a new client) is not left waiting for a long job."""
    busy: list[Future[object]] = [Future() for _ in range(2)]
    jobs = _jobs_with(busy)
    jobs.SATURATED_WAIT_S = 30.0
    a, b = socket.socketpair()
    try:
        jobs.messages_fd = a.fileno
        threading.Timer(0.05, b.send, (b"x",)).start()
        t0 = time.monotonic()
        jobs._wait_for_change(0.0005)
        assert time.monotonic() - t0 < 20.0
    finally:
        a.close()
        b.close()
        for f in busy:
            if not f.done():
                f.set_result(None)
        jobs.close()


def test_the_sleep_takes_an_eventfd_numbered_above_select_s_limit() -> None:
    """A model process holds an fd per DMA map: the eventfd the workers count their ends on
    can be numbered 1024 or more, which select(2) refuses (ValueError: every poll failed and
    no job was posted); the sleep still ends when a job ends."""
    import fcntl
    import os
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("the fd limit is below 1200")
    busy: list[Future[object]] = [Future() for _ in range(2)]
    jobs = _jobs_with(busy)
    high = fcntl.fcntl(jobs._done_fd, fcntl.F_DUPFD_CLOEXEC, 1100)
    os.close(jobs._done_fd)
    jobs._done_fd = high
    jobs.SATURATED_WAIT_S = 30.0
    threading.Timer(0.05, busy[0].set_result, (None,)).start()
    t0 = time.monotonic()
    jobs._wait_for_change(0.0005)
    assert time.monotonic() - t0 < 20.0
    busy[1].set_result(None)
    jobs.close()
    assert jobs._done_fd == -1

def test_settling_sleeps_on_the_jobs_while_messages_wait() -> None:
    """`settle` (a client unmaps memory while jobs run) sleeps until the jobs end even while
    the server has messages waiting (its epoll fd readable: they wait for the unmap being
    handled): it does not spin on a core the workers need."""
    from types import SimpleNamespace

    from warpdrive.emu.dma import DmaFault

    class NoMemory:
        def view(self, *_: object, **__: object) -> memoryview:
            raise DmaFault(0, 1, True, "unmapped")

    busy: list[Future[object]] = [Future() for _ in range(2)]
    jobs = _jobs_with(busy)
    jobs.dma = NoMemory()  # type: ignore[assignment]
    q = SimpleNamespace(qn=0, sq_base=0, sq_depth=2, sqe_size=128)
    jobs.inflight[0] = deque((q, i, (), f, memoryview(b""), memoryview(b""))  # type: ignore[misc]
                             for i, f in enumerate(busy))
    passes = 0
    collect = jobs.collect

    def counted(wait_s: float = 0.0) -> int:
        nonlocal passes
        passes += 1
        return collect(wait_s)

    jobs.collect = counted  # type: ignore[method-assign]
    a, b = socket.socketpair()
    try:
        b.send(b"x")  # a message waits
        jobs.messages_fd = a.fileno
        for k, f in enumerate(busy):
            threading.Timer(0.1 * (k + 1), f.set_result, ((None, None),)).start()
        jobs.settle()
        assert not jobs.inflight
        assert passes <= 4, passes
    finally:
        a.close()
        b.close()
        jobs.close()

def test_closing_the_model_ends_its_worker_threads(tmp_path) -> None:
    """ZipModel.close (the server exiting) shuts its worker pool: no zip-engine thread is left
    behind in the process that served it (before, the pool outlived the model)."""
    from tests.test_emu_server_errors import serve
    from warpdrive.emu.models.zip import ZipModel

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("zip-engine")]

    assert not workers()
    model = ZipModel(workers="2")
    path = str(tmp_path / "zip.sock")
    server, thread = serve(model, path)
    try:
        with wz.open_engine("vfio-user:" + path, announce=False) as eng:
            data = sample(300_000, seed=3)
            assert zlib.decompress(wz.compress(data, wbits=31, device=eng), 31) == data
            assert workers(), "a big job runs on the workers"
    finally:
        server.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert not workers()


def test_workers_are_bound_one_per_cpu_when_they_cover_the_cpus(tmp_path) -> None:
    """As many workers as CPUs: each binds itself to its own CPU (busy workers never sleep, so
    the scheduler's wake-up placement never spreads them; its balancing left two on one CPU
    of a loaded machine about half of the time). The jobs' output is unchanged."""
    import os

    from tests.test_emu_server_errors import serve
    from warpdrive.emu.models.zip import ZipModel

    cpus = sorted(os.sched_getaffinity(0))
    if not 2 <= len(cpus) <= 16:
        pytest.skip(f"{len(cpus)} CPUs")
    model = ZipModel(workers=str(len(cpus)))
    path = str(tmp_path / "zip.sock")
    server, thread = serve(model, path)
    try:
        with wz.open_engine("vfio-user:" + path, announce=False) as eng:
            s = eng.session("compress", wbits=31)
            data = [sample(300_000, seed=i) for i in range(2 * len(cpus))]
            jobs = [s.submit(d) for d in data]
            s.drain()
            assert [zlib.decompress(j.result(), 31) for j in jobs] == data
            pool = [t for t in threading.enumerate() if t.name.startswith("zip-engine")]
            assert len(pool) == len(cpus)
            bound = sorted(os.sched_getaffinity(t.native_id) for t in pool)  # type: ignore[arg-type]
            assert bound == [{c} for c in cpus]
            assert os.sched_getaffinity(0) == set(cpus)  # the model's own thread: unbound
            s.close()
    finally:
        server.stop()
        thread.join(5)


def test_fewer_workers_than_cpus_stay_unbound() -> None:
    import itertools
    import os

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to choose")
    seen: list[set[int]] = []

    def worker() -> None:
        ThreadedJobs(None, workers=len(cpus) - 1)._pin(itertools.count())  # type: ignore[arg-type]
        seen.append(os.sched_getaffinity(0))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [cpus]


def _config_write(fn: Function, offset: int, data: bytes) -> None:
    """A config-space write as the server hands it to the function (REGION_WRITE of region 7)."""
    req = P.vfio_user_region_access(offset, VFIO_PCI_CONFIG_REGION_INDEX, len(data))
    fn.handle_region_write(Message(0, P.VFIO_USER_REGION_WRITE, 0, 0, bytes(req) + data))


@pytest.mark.parametrize("codec", ["libz", "libdeflate"])
def test_bus_mastering_off_stops_a_job_running_on_a_worker(codec: str) -> None:
    """A driver clears PCI_COMMAND's bus master bit, then frees or reuses its buffers (Linux's
    pci_disable_device, vfio-pci's release): once that config write is answered the device
    may not write them (docs/research/pci-bus-master.md). A big compress job running on a
    worker when the write arrives cannot be stopped mid-call; not one byte of the client's
    memory may change after the write returns (a canary over the output buffer, the CQ and
    everything else), no CQE comes for the job even when bus mastering is back, and the
    device works again after (its buffers are the client's memory, not zero pages)."""
    c, model, fn = model_client(workers="2")
    try:
        model.jobs.unit.codec = codec  # type: ignore[union-attr]
        c.bring_up()
        big = 8 << 20  # the largest job (HZ_MAX_SIZE): ~0.1-1 s of compression here
        iova2 = 1 << 32
        fd = os.memfd_create("bus-master-canary")
        os.ftruncate(fd, 2 * big)
        client = mmap.mmap(fd, 2 * big)
        fn.dma.add(iova2, 2 * big, fd, 0, True, True)
        os.close(fd)
        data = sample(big, seed=11)
        client[:big] = data
        client[big:] = b"\xa5" * big  # the canary
        fmt = Format("deflate", 15)
        tmpl = SqeTemplate.for_format(fmt, qm.QM_HW_V2)
        tmpl.fill(c.mem, SQ, in_len=big, dst=iova2 + big, avail=big, tag=0x77,  # type: ignore
                  src=iova2)
        c.qm.doorbell(qm.doorbell_v2(0, qm.QM_DB_CMD_SQ, 1))
        c.qm.process()
        jobs = model.jobs
        flight = jobs.inflight[0]  # type: ignore[union-attr]
        fut = flight[0][3]
        _config_write(fn, pci_regs.PCI_COMMAND, struct.pack("<H", pci_regs.PCI_COMMAND_MEMORY))
        assert not fut.done(), "the job ended before the write: make it bigger"
        after = bytes(client), bytes(c.mem)
        fut.result(timeout=60)
        for _ in range(3):
            model.poll()
        assert bytes(client) == after[0], "the job wrote into the client's memory after the write"
        assert bytes(c.mem) == after[1], "the device wrote (a CQE?) after the write"
        assert not jobs.inflight  # type: ignore[union-attr]
        assert fn.dma.held_after_unmap == 0
        # bus mastering back: no late CQE; the device reads and writes the client's memory again
        _config_write(fn, pci_regs.PCI_COMMAND, struct.pack(
            "<H", pci_regs.PCI_COMMAND_MEMORY | pci_regs.PCI_COMMAND_MASTER))
        model.poll()
        assert bytes(c.mem) == after[1]
        c.tail = 1  # the next SQE; its CQE is the queue's first
        consumed, _produced, st, _last, out, _w = c.job(fmt, data[:10_000])
        assert st == hw.STATUS_OK and consumed == 10_000
        assert zlib.decompress(out, -15) == data[:10_000]
        assert qm.CQE.unpack_from(c.mem, CQ)[3] == 1  # (no CQE of slot 0 came before it)
    finally:
        fn.close()
