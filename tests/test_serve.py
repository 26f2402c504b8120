"""`warpdrive serve`: one ZIP function (the bundled model over vfio-user) shared by many client
processes, each with its own virtual function. The clients are the unchanged ZIP driver
(`device="broker:PATH"`, `WARPDRIVE_DEVICE`); the broker runs in a thread of the test process
(its state is inspected) or as the `warpdrive serve` command."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import pytest

import warpdrive.zip as wz
from rigs.broker import SQE, addr_words
from tests.brokerutil import RawZip, broker_thread, eventually, serve_process
from tests.vfuraw import RawClient
from tests.ziputil import cli, sample
from warpdrive.backends.vfiouser.wire import PeerClosed
from warpdrive.cli import main as cli_main
from warpdrive.devices.zip import hw
from warpdrive.errors import ConnectionLostError, ForkedContextError, WarpdriveError
from warpdrive.uapi import vfio_user as P
from warpdrive.zip import ZipDataError

ROOT = Path(__file__).resolve().parent.parent


def client_script(body: str) -> str:
    return textwrap.dedent("""
        import os, sys, zlib
        import warpdrive.zip as wz
    """) + textwrap.dedent(body)


def run_clients(n: int, env: dict[str, str], body: str) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, "-c", client_script(body), str(i)],
                             env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(n)]


def test_four_client_processes_share_one_function(tmp_path: Path) -> None:
    with broker_thread(str(tmp_path / "b.sock")) as rb:
        procs = run_clients(4, {"WARPDRIVE_DEVICE": rb.name}, """
            seed = int(sys.argv[1])
            import random
            rng = random.Random(seed)
            for i in range(20):
                data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000))) * 7
                blob = wz.compress(data, wbits=31)      # no device named: WARPDRIVE_DEVICE
                assert zlib.decompress(blob, 31) == data
                assert wz.decompress(blob, wbits=31) == data
            print("ok", wz.default_engine().name)
        """)
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            assert out.split() == ["ok", rb.name]
        assert rb.broker.jobs >= 4 * 40
        assert rb.broker.refused == 0
        eventually(lambda: rb.server.clients == 0, what="clients gone")
        # each client's compress and decompress queues had a hardware queue of their own
        assert len(rb.broker.hw) >= 2 and all(not h.users for h in rb.broker.hw)


def test_the_command_line_runs_through_the_broker(tmp_path: Path) -> None:
    data = sample(300_000, seed=12)
    (tmp_path / "a.txt").write_bytes(data)
    with broker_thread(str(tmp_path / "b.sock")) as rb:
        r = cli("compress", "a.txt", "--device", rb.name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        assert zlib.decompress((tmp_path / "a.txt.gz").read_bytes(), 31) == data
        assert rb.broker.jobs > 0


def test_client_queues_share_hardware_queues_fairly(tmp_path: Path) -> None:
    """Two hardware queues (one per direction), three clients: they share, each within its
    share of the queue, and all of them finish."""
    with broker_thread(str(tmp_path / "b.sock"), model_options={"queues": "2"}) as rb:
        engines = [wz.open_engine(rb.name, wait="block") for _ in range(3)]
        try:
            sessions = [e.session("compress") for e in engines]
            data = [os.urandom(64) * (64 * (i + 1)) for i in range(3)]
            jobs = [[s.submit(d, flush=False) for _ in range(40)]
                    for s, d in zip(sessions, data)]
            hq = rb.broker.hw
            assert len(hq) == 1  # the other queue is kept for the other direction
            comp = hq[0]
            assert comp.alg == hw.ZIP_QC_COMPRESS
            assert len(comp.users) == 3
            share = min(rb.broker.max_inflight, comp.q.capacity // 3)
            assert all(u.limit == share for u in comp.users)
            for s in sessions:
                s.flush()
            for s, js, d in zip(sessions, jobs, data):
                s.drain()
                for j in js:
                    assert zlib.decompress(j.result()) == d
        finally:
            for e in engines:
                e.close()


def test_a_flooding_client_cannot_starve_another(tmp_path: Path) -> None:
    """A keeps a shared hardware queue full (300 jobs queued); B's one job gets a slot at once
    and completes behind at most A's share, long before A's backlog is done."""
    with broker_thread(str(tmp_path / "b.sock"), model_options={"queues": "2"},
                       broker_opts={"max_inflight": 8}) as rb:
        a = wz.open_engine(rb.name, wait="block")
        b = wz.open_engine(rb.name, wait="block")
        try:
            sa, sb = a.session("compress"), b.session("compress")
            sb.submit(b"warm")  # B's queue started: both share the one compress queue
            sb.drain()
            big = os.urandom(1 << 15) * 2
            jobs = [sa.submit(big, flush=False) for _ in range(300)]
            sa.flush()
            client_a = rb.broker.clients[0]
            eventually(lambda: client_a.submitted > 0, what="A's jobs on the device")
            job = sb.submit(b"me too" * 500)
            sb.drain()
            assert zlib.decompress(job.result()) == b"me too" * 500
            assert client_a.submitted > rb.broker.clients[1].submitted  # that is A
            assert client_a.completed < 150, "B waited for A's whole backlog"
            sa.drain()
            assert len(jobs) == 300 and all(j.done for j in jobs)
        finally:
            a.close()
            b.close()


def test_isolation_a_clients_sqes_cannot_reach_anything_else(tmp_path: Path) -> None:
    """Client A names B's buffers (by B's own IOVAs and by where the device sees them), the
    broker's rings, unmapped and overflowing ranges: each job ends in an error CQE for A, B's
    canaries are unchanged, and the broker (and A, and B) go on working."""
    with broker_thread(str(tmp_path / "b.sock")) as rb:
        a = RawZip(rb.name)
        b = RawZip(rb.name)
        try:
            canary = bytes(range(256)) * 256
            b.src.write(0, canary)
            b.dst.write(0, canary)
            status, produced = a.run(a.words())  # a good job first: A works
            assert status == hw.STATUS_OK and produced > 0
            _, client_b = rb.broker.clients  # in the order they connected
            b_dev = [m.dev_iova for m in client_b.maps.maps]
            ring_iovas = [rb.broker.qm._queues[h.q.qn][1].iova for h in rb.broker.hw]
            assert all(i is not None for i in ring_iovas)
            a_maps = [(buf.iova, buf.iova + buf.size) for buf in (a.src, a.dst)]

            def a_owns(iova: int) -> bool:
                return any(lo <= iova < hi for lo, hi in a_maps)

            targets = [i for i in b_dev + ring_iovas if i is not None and not a_owns(i)]
            targets += [0xDEAD_0000_0000, 0x1000]  # never mapped
            assert len(targets) >= 4
            for t in targets:
                lo, hi = addr_words(t)
                assert a.run(a.words(dw20=lo, dw21=hi))[0] == hw.STATUS_DMA_FAULT  # write
                assert a.run(a.words(dw18=lo, dw19=hi))[0] == hw.STATUS_DMA_FAULT  # read
            # ranges that start in A's map and run past its end
            assert a.src.iova is not None and a.dst.iova is not None
            end_lo, end_hi = addr_words(a.dst.iova + a.size - 16)
            assert a.run(a.words(dw20=end_lo, dw21=end_hi))[0] == hw.STATUS_DMA_FAULT
            assert a.run(a.words(dw4=a.size + 1))[0] == hw.STATUS_DMA_FAULT
            assert a.run(a.words(dw9=hw.sqe_dw9(hw.ALG_DEFLATE, buf_type=hw.SQE_BUF_SGL))
                         )[0] == hw.STATUS_BAD_REQUEST
            assert b.src.read(0, len(canary)) == canary and b.dst.read(0, len(canary)) == canary
            assert rb.broker.refused >= 2 * len(targets) + 3
            assert a.run(a.words())[0] == hw.STATUS_OK  # A still works
            assert b.run(b.words())[0] == hw.STATUS_OK  # and B
            assert rb.thread.is_alive()
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("doorbell", ["mmap", "message"])
def test_a_run_mixing_good_and_bad_sqes(tmp_path: Path, doorbell: str) -> None:
    """One doorbell announces 24 SQEs, good ones between SQEs naming B's buffers, unmapped
    memory, ranges past A's map, an SGL: the run cannot pass whole, so each bad SQE ends in its
    own error CQE, every good one is done, B's canaries are unchanged. With the doorbell as a
    message (trapped) instead of a store in the mapped page, the broker still takes the run."""
    with broker_thread(str(tmp_path / "b.sock")) as rb:
        a = RawZip(rb.name, doorbell=doorbell)
        b = RawZip(rb.name)
        try:
            canary = bytes(range(256)) * 256
            b.src.write(0, canary)
            b.dst.write(0, canary)
            assert a.src.iova is not None and a.dst.iova is not None
            a_maps = [(buf.iova, buf.iova + buf.size) for buf in (a.src, a.dst)]
            # B's buffers where the device sees them (B's own IOVAs are A's too: each client
            # has its own IOVA space)
            b_dev = [m.dev_iova for m in rb.broker.clients[1].maps.maps
                     if not any(lo <= m.dev_iova < hi for lo, hi in a_maps)]
            assert b_dev
            bad = [a.words(dw20=addr_words(b_dev[0])[0], dw21=addr_words(b_dev[0])[1]),
                   a.words(dw18=addr_words(b_dev[-1])[0], dw19=addr_words(b_dev[-1])[1]),
                   a.words(dw18=0x1000, dw19=0),
                   a.words(dw20=addr_words(a.dst.iova + a.size - 16)[0],
                           dw21=addr_words(a.dst.iova + a.size - 16)[1]),
                   a.words(dw9=hw.sqe_dw9(hw.ALG_DEFLATE, buf_type=hw.SQE_BUF_SGL))]
            want = [hw.STATUS_DMA_FAULT] * 4 + [hw.STATUS_BAD_REQUEST]
            sqes, expect = [], []
            for i in range(24):
                if i % 5 == 3:
                    sqes.append(bad[i // 5])
                    expect.append(want[i // 5])
                else:
                    sqes.append(a.words())
                    expect.append(hw.STATUS_OK)
            got = a.run_many(sqes)
            assert [s for s, _ in got] == expect
            assert all(p > 0 for (s, p) in got if s == hw.STATUS_OK)
            assert b.src.read(0, len(canary)) == canary and b.dst.read(0, len(canary)) == canary
            assert a.run_many([a.words()] * 8) == [got[0]] * 8  # a whole good run after it
            assert b.run(b.words())[0] == hw.STATUS_OK
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("nap_s", [0.0, 300e-6], ids=["yield", "nap"])
def test_sqes_beyond_a_clients_share_wait_without_another_doorbell(tmp_path: Path,
                                                                   nap_s: float) -> None:
    """A client queue may have 2 jobs on the device: 20 SQEs behind one doorbell go 2 at a time,
    and the rest are taken as room frees, though the client never stores a new value (its
    waits only store the same doorbell again, which changes nothing in the page). The same
    whether the broker's loop yields or naps after a pass without work."""
    with broker_thread(str(tmp_path / "b.sock"), broker_opts={"max_inflight": 2},
                       nap_s=nap_s) as rb:
        a = RawZip(rb.name)
        try:
            got = a.run_many([a.words()] * 20)
            assert [s for s, _ in got] == [hw.STATUS_OK] * 20
            assert rb.broker.clients[0].completed == 20
        finally:
            a.close()


def test_a_dead_clients_queues_and_maps_are_freed(tmp_path: Path) -> None:
    with broker_thread(str(tmp_path / "b.sock"), model_options={"queues": "2"}) as rb:
        (p,) = run_clients(1, {}, f"""
            eng = wz.open_engine("{rb.name}", wait="spin")
            s = eng.session("compress")
            for _ in range(50):
                s.submit(os.urandom(1 << 16), flush=False)
            s.flush()
            print("submitted", flush=True)
            import time
            time.sleep(60)
        """)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "submitted"
        eventually(lambda: any(h.users for h in rb.broker.hw), what="queues in use")
        p.kill()
        p.wait()
        # Bounded, not timed: the broker notices the socket close at once, drops the client's
        # queues, and unmaps its memory as soon as its jobs on the device are done.
        eventually(lambda: rb.server.clients == 0 and not rb.broker.clients
                   and not rb.broker._parked and all(not h.users for h in rb.broker.hw)
                   and not rb.broker.dev.dma.mappings[4:], timeout=20,
                   what="client's queues and maps freed")
        p.stdout.close()
        assert p.stderr is not None
        p.stderr.close()
        with wz.open_engine(rb.name) as eng:  # the function is whole for the next client
            assert zlib.decompress(eng.compress(b"after" * 100)) == b"after" * 100


def test_the_brokers_death_is_a_lost_connection(tmp_path: Path) -> None:
    sock = str(tmp_path / "b.sock")
    with serve_process(sock) as broker:
        eng = wz.open_engine("broker:" + sock, wait="spin", timeout=25)
        s = eng.session("compress")
        s.submit(b"x" * 4096)
        s.drain()
        s.submit(os.urandom(1 << 20))  # in flight when the broker dies
        broker.kill()
        with pytest.raises(ConnectionLostError):
            s.drain()
        with pytest.raises(WarpdriveError):
            eng.compress(b"again")
        eng.close()


def test_the_device_dying_stops_the_broker_and_its_clients_hear_of_it(tmp_path: Path) -> None:
    sock = str(tmp_path / "b.sock")
    with serve_process(sock, text=True) as broker:
        eng = wz.open_engine("broker:" + sock, wait="spin", timeout=25)
        s = eng.session("compress")
        src = s.buffer(1 << 16)
        job = s.prepare(src, 1 << 16)  # mapped now: submitting it again needs no message
        s.submit(job)
        s.drain()
        model = [int(c) for t in Path(f"/proc/{broker.pid}/task").iterdir()
                 for c in (t / "children").read_text().split()]
        assert len(model) == 1
        os.kill(model[0], signal.SIGSTOP)
        s.submit(job)  # in flight on the device when it dies
        os.kill(model[0], signal.SIGKILL)
        with pytest.raises(ConnectionLostError):
            s.drain()
        eng.close()
        assert broker.wait(30) == 1  # the broker stopped, saying why
        assert broker.stderr is not None
        assert "closed the connection" in broker.stderr.read()


def test_a_forked_child_cannot_use_its_parents_function(tmp_path: Path) -> None:
    with broker_thread(str(tmp_path / "b.sock")) as rb:
        eng = wz.open_engine(rb.name, wait="block")
        try:
            assert zlib.decompress(eng.compress(b"parent" * 10)) == b"parent" * 10
            pid = os.fork()
            if pid == 0:  # the child: I1, no COW sharing of the parent's queues
                code = 3
                try:
                    eng.compress(b"child")
                except ForkedContextError:
                    code = 0
                except BaseException:
                    code = 2
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert zlib.decompress(eng.compress(b"parent" * 10)) == b"parent" * 10
        finally:
            eng.close()


def test_serve_refuses_a_uacce_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "hisi_zip-0", "--socket", "/nonexistent/x.sock"]) == 1
    err = capsys.readouterr().err
    assert "already shares it" in err and "hisi_zip-0" in err and "WARPDRIVE_DEVICE" in err


def test_serve_refuses_a_nap_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "emu", "--socket", "/nonexistent/x.sock", "--nap-us", "-1"]) == 2
    assert "--nap-us -1: give 0..100000" in capsys.readouterr().err
    for opt, value, said in (("--gather", "0", "give 1..1024"),
                             ("--hold-us", "-1", "give 0..100000")):
        assert cli_main(["serve", "emu", "--socket", "/nonexistent/x.sock", opt, value]) == 2
        assert f"{opt} {value}: {said}" in capsys.readouterr().err


def test_corrupt_input_is_the_clients_error_only(tmp_path: Path) -> None:
    with broker_thread(str(tmp_path / "b.sock")) as rb, wz.open_engine(rb.name) as eng:
        with pytest.raises(ZipDataError):
            eng.decompress(b"\x78\x9c" + os.urandom(300))
        assert eng.decompress(zlib.compress(b"fine" * 50)) == b"fine" * 50


def _connect_as(uid: int, path: str) -> str:
    """Connect and negotiate from a forked child running as `uid` (no exec: this interpreter
    may live where another user cannot read it); what happened, as a word."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        word = b"error"  # (anything unexpected: the test shows it)
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            c = RawClient(path, negotiate=False)
            try:  # a refused peer's connection is closed at once: sending may fail already
                c.send(P.VFIO_USER_VERSION, P.pack_version(0, 0, P.Capabilities()))
                reply = c.recv(20)
                word = b"accepted" if not reply.is_error else b"refused"
            except (PeerClosed, BrokenPipeError, ConnectionResetError):
                word = b"refused"
        finally:
            os.write(w, word)
            os._exit(0)
    os.close(w)
    try:
        word = os.read(r, 16).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return word


def test_access_control_refuses_other_users_and_logs(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    from warpdrive.serve.access import AllowList

    caplog.set_level(logging.INFO, logger="warpdrive")
    nobody = 65534
    d = Path(tempfile.mkdtemp(prefix="wd-acl-"))  # a directory another user can reach
    d.chmod(0o755)
    sock = str(d / "b.sock")
    try:
        for allow, expect in (([], "refused"), ([nobody], "accepted")):
            with broker_thread(sock, socket_mode=0o666, allow=AllowList(uids=allow)) as rb:
                assert oct(os.stat(rb.path).st_mode & 0o777) == "0o666"
                assert _connect_as(nobody, sock) == expect
                assert _connect_as(0, sock) == "accepted"  # root always may
    finally:
        d.rmdir()
    assert "refused client" in caplog.text and f"uid {nobody}" in caplog.text
    assert "accepted client" in caplog.text


def test_nice_sets_the_brokers_priority_not_the_devices(tmp_path: Path) -> None:
    """`--nice N`: the broker's loop runs at N (ahead of clients that busy-poll); the device it
    opened (here the bundled model, its child process) keeps its own priority."""
    sock = str(tmp_path / "n.sock")
    own = os.getpriority(os.PRIO_PROCESS, 0)
    target = own + 3 if own <= 16 else own - 3  # nice stops at 19 (a run under `nice -n 19`)
    if target < own and os.getuid() != 0:
        pytest.skip(f"this run is at nice {own}: only root may set a broker below it")
    with serve_process(sock, "--nice", str(target)) as broker:
        assert os.getpriority(os.PRIO_PROCESS, broker.pid) == target
        children = [int(c) for t in Path(f"/proc/{broker.pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
        assert children and all(os.getpriority(os.PRIO_PROCESS, c) == own for c in children)
        with wz.open_engine("broker:" + sock) as eng:
            assert eng.decompress(eng.compress(b"nice" * 99)) == b"nice" * 99


def test_cpu_places_the_broker_and_moves_its_model_off(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`--cpu N`: the broker's loop runs on N (and polls there instead of napping); the bundled
    model it started moves to the other CPUs, so the poller never takes turns with it."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    mine, rest = allowed[-1], set(allowed[:-1])
    sock = str(tmp_path / "c.sock")
    with serve_process(sock, "--cpu", str(mine)) as broker:
        assert os.sched_getaffinity(broker.pid) == {mine}
        children = [int(c) for t in Path(f"/proc/{broker.pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
        assert children
        for c in children:
            for task in Path(f"/proc/{c}/task").iterdir():
                assert os.sched_getaffinity(int(task.name)) == rest
        with wz.open_engine("broker:" + sock) as eng:
            assert eng.decompress(eng.compress(b"cpu" * 99)) == b"cpu" * 99
    every = ",".join(map(str, allowed))
    for bad, said in (("x", "not a CPU list"), ("3-1", "not a CPU list"),
                      (str(max(allowed) + 1000), "is not one this process may use"),
                      # the bundled model would be left on the broker's CPUs: said, not done
                      (every, f"covers every CPU the bundled model may use ({every})")):
        assert cli_main(["serve", "emu", "--socket", "/nonexistent/x.sock", "--cpu", bad]) == 2
        assert f"--cpu {bad}" in (err := capsys.readouterr().err) and said in err, err
    assert "leave a CPU out for the model (e.g. --cpu" in err and len(err.splitlines()) == 1
    assert os.sched_getaffinity(0) == set(allowed)  # (this process was not moved)


def test_socket_mode_and_group_from_the_command_line(tmp_path: Path) -> None:
    sock = str(tmp_path / "g.sock")
    with serve_process(sock, "--group", "0", "--mode", "0660", text=True) as broker:
        st = os.stat(sock)
        assert oct(st.st_mode & 0o777) == "0o660" and st.st_gid == 0
        with wz.open_engine("broker:" + sock) as eng:
            assert eng.decompress(eng.compress(b"abc" * 99)) == b"abc" * 99
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(30) == 0
        assert not os.path.exists(sock)
        assert broker.stderr is not None
        log = broker.stderr.read()
        assert "accepted client" in log and "listening on" in log


def test_a_client_gets_no_fault_injection(tmp_path: Path) -> None:
    """The model's DBG_INJECT register (EQ/CQ overflows on request, for witnesses of a driver's
    error paths) is not handed to a broker's clients: their function's BAR0 is read-only, a
    store there is refused and changes nothing, its counters still read; the bundled model
    keeps the register for the witnesses (test_zip_bringup's injection test)."""
    import struct

    from warpdrive.devices.hisi_qm import regs as qmr
    from warpdrive.emu.models.zip import DBG_BAR, DBG_INJECT, DBG_SIZE, decode_stats

    with broker_thread(str(tmp_path / "b.sock")) as rb:
        a = RawZip(rb.name)
        try:
            assert a.run(a.words())[0] == hw.STATUS_OK
            info = a.dev.region_info(DBG_BAR)
            assert info.readable and not info.writable
            for kind in (qmr.AEQE_TYPE_EQ_OVERFLOW, qmr.AEQE_TYPE_CQ_OVERFLOW | a.q.qn << 16):
                store = struct.pack("<I", kind)
                with pytest.raises(WarpdriveError, match="not writable"):
                    a.dev.region_write(DBG_BAR, DBG_INJECT, store)
                # a client that sends the store anyway: the broker refuses it
                with pytest.raises(WarpdriveError, match=r"REGION_WRITE .*EINVAL"):
                    a.dev._region_write(info, DBG_INJECT, store)  # type: ignore[attr-defined]
            stats = decode_stats(a.dev.region_read(DBG_BAR, 0, DBG_SIZE))
            assert stats["aeqes"] == 0 and stats["jobs"] == 1
            assert a.run(a.words())[0] == hw.STATUS_OK  # the queue was not stopped
        finally:
            a.close()


def test_bus_mastering_off_waits_for_the_clients_jobs_on_the_device(tmp_path: Path) -> None:
    """A client clears bus mastering with a big job on the device (the broker cannot call it
    back: the device writes the client's memory itself): the config write is answered only once
    that job has ended, so not one byte of the client's memory changes after it, no completion
    comes for it, and the client's queue works again once bus mastering is back
    (docs/research/pci-bus-master.md)."""
    size = 4 << 20
    with broker_thread(str(tmp_path / "b.sock")) as rb:
        a = RawZip(rb.name, size=size)
        try:
            assert a.run(a.words())[0] == hw.STATUS_OK
            data = sample(size, seed=23)
            a.src.write(0, data)
            a.dst.write(0, b"\xa5" * size)  # the canary
            q = a.q
            off = q.post(object())
            q.sq[off:off + hw.SQE_SIZE] = SQE.pack(*a.words(dw4=size, dw5=size))
            jobs_before = rb.broker.jobs
            q.ring()
            eventually(lambda: sum(h.q.outstanding for h in rb.broker.hw) == 1,
                       what="the job on the device")
            a.dev.enable_bus_master(False)
            assert sum(h.q.outstanding for h in rb.broker.hw) == 0, "answered before the job ended"
            after = a.dst.read(0, size), bytes(q.sq), bytes(q.cq16)
            deadline = time.monotonic() + 30  # (without the wait: until the job has ended)
            while (rb.broker.jobs == jobs_before and time.monotonic() < deadline):
                time.sleep(0.05)
            time.sleep(0.1)
            assert a.dst.read(0, size) == after[0], "the device wrote after the config write"
            assert (bytes(q.sq), bytes(q.cq16)) == after[1:], "a completion came after it"
            a.dev.enable_bus_master(True)
            b = RawZip(rb.name)  # (the device and the broker work on)
            assert b.run(b.words())[0] == hw.STATUS_OK
            b.close()
            q.wedged = True  # (its job will never complete: the close resets the function)
        finally:
            a.close()
