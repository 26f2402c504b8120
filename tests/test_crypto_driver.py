"""warpdrive's virtio-crypto driver on the bundled model (emu:crypto / a shared model server):
the driver gaps of issue 13 — requests longer than a slot split rather than refused, waiting on
MSI-X instead of busy-polling, sessions of dead processes reclaimed — and how a Cipher picks its
device."""

from __future__ import annotations

import logging
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crypto_vectors import IV, K128, K256, NIST_CT, PT, reference
from cryptoproc import Forker, die_holding_sessions

import warpdrive
from warpdrive import crypto
from warpdrive.crypto import Cipher, VirtioCrypto, engine
from warpdrive.errors import ArgumentTypeError, ClosedError, DeviceError, InvalidArgumentError

MODES = [("aes-ecb", 16), ("aes-cbc", 24), ("aes-ctr", 32), ("aes-xts", 64)]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.fixture(scope="module")
def small() -> Iterator[warpdrive.Device]:
    """A model whose engine has 4 KiB request slots, so splits are many and cheap."""
    with warpdrive.open("emu:crypto") as d:
        VirtioCrypto.of(d, max_request=4096, ring_size=64)
        yield d


# -- long requests -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,ksize", MODES, ids=[m[0] for m in MODES])
def test_long_requests_are_split_and_match_cryptography(small: warpdrive.Device, name: str,
                                                        ksize: int) -> None:
    rng = random.Random(ksize)
    key = rng.randbytes(ksize)
    eng = engine(small)
    with Cipher(name, key, device=small) as c:
        assert c.max_request == 4096
        for n in (4096 + 16, 3 * 4096, 5 * 4096 + 48, 40_000 - 40_000 % 16):
            iv = rng.randbytes(16)
            data = rng.randbytes(n)
            ref_iv = None if name == "aes-ecb" else iv
            rung = eng.doorbells
            ct = c.encrypt(iv, data)
            assert ct == reference(name, key, ref_iv, data), (name, n)
            if name == "aes-cbc":  # pieces chained on each other's output: one doorbell each
                assert eng.doorbells - rung == -(-n // 4096)
            elif name != "aes-xts":  # independent pieces: all in one doorbell
                assert eng.doorbells - rung == 1
            out = bytearray(n + 7)
            assert c.decrypt(iv, ct, out) is out and out[:n] == data


def test_ctr_counter_carries_across_pieces_and_wraps_at_128_bits(small: warpdrive.Device) -> None:
    top = bytes([0xFF] * 15 + [0xFE])  # wraps to zero after 2 blocks, inside the first piece
    near = (2**64 - 3).to_bytes(16, "big")  # the carry into the upper 64 bits
    data = os.urandom(3 * 4096)
    with Cipher("aes-ctr", K256, device=small) as c:
        for iv in (top, near, bytes(16)):
            assert c.encrypt(iv, data) == reference("aes-ctr", K256, iv, data)


def test_long_and_short_requests_in_one_batch(small: warpdrive.Device) -> None:
    rng = random.Random(5)
    with Cipher("aes-cbc", K128, device=small) as c:
        cases = {}
        for n in (16, 10 * 4096, 64, 4096 * 3 + 16, 4096):
            iv, data = rng.randbytes(16), rng.randbytes(n)
            dec = rng.random() < 0.5
            cases[c.submit(iv, data, decrypt=dec)] = (iv, data, dec)
        got = {x.id: x.result() for x in c.wait()}
        assert c.in_flight == 0
        for rid, (iv, data, dec) in cases.items():
            assert got[rid] == reference("aes-cbc", K128, iv, data, decrypt=dec)


def test_slots_reused_with_another_shape_each_time(small: warpdrive.Device) -> None:
    """A slot's descriptor lengths are stored only when its request changes shape (IV or data
    length): requests of every shape, ECB (no IV) and CBC interleaved, over every slot several
    times, each checked against `cryptography`."""
    rng = random.Random(14)
    with Cipher("aes-ecb", K128, device=small) as ecb, \
            Cipher("aes-cbc", K128, device=small) as cbc:
        nslots = VirtioCrypto.of(small).nslots
        for _ in range(3):
            cases = {}
            for i in range(nslots):
                n = rng.choice((16, 64, 4096, 16 * rng.randrange(1, 256)))
                c, name = (ecb, "aes-ecb") if i % 3 == 0 else (cbc, "aes-cbc")
                iv = None if c is ecb else rng.randbytes(16)
                data = rng.randbytes(n)
                cases[c, c.submit(iv, data)] = (name, iv, data)
            got = {(c, x.id): x.result() for c in (ecb, cbc) for x in c.wait()}
            for key, (name, iv, data) in cases.items():
                assert got[key] == reference(name, K128, iv, data), (name, len(data))


def test_submit_many_and_poll_many(small: warpdrive.Device) -> None:
    """A batch in one call: consecutive ids, slot-sized and longer requests mixed (the long one
    split), results in the given `out` buffers, completions appended by poll_many; a bad request
    anywhere in a batch stages none of it."""
    rng = random.Random(32)
    with Cipher("aes-cbc", K128, device=small) as c:
        sizes = [64, 16, 4096, 3 * 4096 + 32, 128]
        ivs = [rng.randbytes(16) for _ in sizes]
        datas = [rng.randbytes(n) for n in sizes]
        outs = [bytearray(n) for n in sizes]
        first = c.submit_many(ivs, datas, outs=outs)
        assert c.in_flight == len(sizes)
        got: list[crypto.Completion] = []
        while len(got) < len(sizes):
            c.poll_many(got)
        assert sorted(x.id for x in got) == list(range(first, first + len(sizes)))
        for x in got:
            i = x.id - first
            assert x.ok and x.data is outs[i]
            assert outs[i] == reference("aes-cbc", K128, ivs[i], datas[i])
        assert c.poll_many(got) == 0 and len(got) == len(sizes)
        for bad in ([ivs[0], b"short"], [ivs[0], ivs[1]]):
            data = [datas[0], datas[1] if bad[1] is not ivs[1] else b"x" * 15]
            with pytest.raises(InvalidArgumentError):
                c.submit_many(bad, data)
            assert c.in_flight == 0 and c.poll() == []
        with pytest.raises(InvalidArgumentError, match="one of each per request"):
            c.submit_many(ivs[:2], datas[:3])


def test_a_failing_piece_fails_the_whole_request(small: warpdrive.Device) -> None:
    eng = engine(small)
    with Cipher("aes-ctr", K128, device=small) as c:
        c.encrypt(IV, PT)
        eng.destroy_session(c._sessions[True])  # every piece now gets INVSESS
        with pytest.raises(DeviceError, match="INVSESS"):
            c.encrypt(IV, bytes(5 * 4096))
        c._sessions.clear()
    eng.transport.check_status()


# -- waiting on MSI-X --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow() -> Iterator[warpdrive.Device]:
    """A model that completes every data request 50 ms after taking it."""
    with warpdrive.open("emu:crypto", model_options={"latency_us": "50000"}) as d:
        yield d


def test_sleeping_waiter_uses_no_cpu_and_polling_one_does(slow: warpdrive.Device) -> None:
    eng = engine(slow)
    assert eng.can_sleep
    q = eng.dataq
    assert q is not None
    with Cipher("aes-cbc", K256, device=slow, poll=False) as sleeper, \
            Cipher("aes-cbc", K256, device=slow) as spinner:
        for c in (sleeper, spinner):  # sessions exist: only data requests below
            c.encrypt(IV, PT)
        t, cpu = time.monotonic(), cpu_s()
        for _ in range(5):
            assert sleeper.encrypt(IV, PT) == NIST_CT["F.2.5"]
        wall, asleep = time.monotonic() - t, cpu_s() - cpu
        assert wall >= 0.25
        assert asleep < 0.2 * wall, (asleep, wall)  # in select() while the device works
        assert q._avail[0] == 1  # VRING_AVAIL_F_NO_INTERRUPT again once nobody sleeps
        cpu = cpu_s()
        for _ in range(5):
            assert spinner.encrypt(IV, PT) == NIST_CT["F.2.5"]
        spinning = cpu_s() - cpu
        # busy-polling burns whatever CPU the scheduler gives it (the machine may be loaded)
        assert spinning > 3 * asleep, (spinning, asleep)
        ids = [sleeper.submit(IV, PT) for _ in range(20)]  # a batch, asleep
        assert sorted(x.id for x in sleeper.wait()) == ids


def test_poll_false_everywhere_on_a_fast_device(small: warpdrive.Device) -> None:
    with Cipher("aes-xts", K256, device=small, poll=False) as c:
        data = os.urandom(3 * 4096)  # also the long-request path of XTS
        ct = c.encrypt(IV, data)
        assert ct == reference("aes-xts", K256, IV, data)
        assert c.decrypt(IV, ct) == data


def test_no_vector_no_sleeping() -> None:
    with warpdrive.open("emu:crypto") as d:
        VirtioCrypto.of(d, interrupts=False)
        with pytest.raises(warpdrive.errors.UnsupportedError, match="poll=True"):
            Cipher("aes-cbc", K128, device=d, poll=False)
        with Cipher("aes-cbc", K128, device=d) as c:
            assert c.encrypt(IV, PT) == NIST_CT["F.2.1"]


# -- sessions of dead processes ----------------------------------------------------------------
@pytest.fixture
def shared_model(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A model server that outlives its clients (like QEMU's device outlives a process),
    keeping sessions across device resets as QEMU's builtin backend does."""
    sock = tmp_path / "crypto.sock"
    opts = getattr(request, "param", {"sessions": "256"})
    args = [a for k, v in {"keep_sessions": "1", **opts}.items() for a in ("--set", f"{k}={v}")]
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "warpdrive.emu", "crypto", "--socket",
                                 str(sock), *args], stderr=log)
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "no model"
                time.sleep(0.02)
            yield f"vfio-user:{sock}"
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.parametrize("shared_model", [{"sessions": "8"}], indirect=True)
def test_dead_processes_leak_sessions_without_the_journal(shared_model: str) -> None:
    said = [die_holding_sessions(shared_model, reclaim=False) for _ in range(5)]
    assert said[:4] == ["ok"] * 4  # two sessions each (encrypt, decrypt)
    assert "ERR" in said[4]  # the 8-session table is full of dead processes' sessions


@pytest.mark.slow
def test_more_than_256_deaths_and_the_function_still_works(shared_model: str) -> None:
    with Forker() as forker:
        for i in range(260):
            assert forker.die_holding_sessions(shared_model) == "ok", f"death {i}"
    with warpdrive.open(shared_model) as d:
        eng = VirtioCrypto.of(d)
        assert eng.reclaimed  # the last child's session, destroyed here
        with Cipher("aes-cbc", K256, device=d) as c:
            assert c.encrypt(IV, PT) == NIST_CT["F.2.5"]
    with warpdrive.open(shared_model) as d:  # closed cleanly: nothing left to reclaim
        assert VirtioCrypto.of(d).reclaimed == []


def test_a_live_owner_keeps_the_function(shared_model: str) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        dev = warpdrive.open(shared_model)
        VirtioCrypto.of(dev, ring_size=16, max_request=4096)
        os.write(w, b"ok")
        signal.pause()
        os._exit(0)
    os.close(w)
    assert os.read(r, 8) == b"ok"
    try:
        from warpdrive.devices.crypto.journal import SessionJournal, journal_dir

        d = journal_dir()
        assert d is not None
        with warpdrive.open(shared_model, timeout=0.5) as dev:  # the server queues us
            pytest.fail(f"second client connected while the first holds {dev.name}")
    except warpdrive.errors.WarpdriveError:
        pass  # one client at a time on the server: refused before the journal is reached
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    ident = f"vfio-user:{Path(shared_model[10:]).resolve()}:123"
    j1, j2 = SessionJournal(ident, d), SessionJournal(ident, d)
    assert j1.acquire() == []
    j1.add(7)
    with pytest.raises(warpdrive.errors.DeviceBusyError, match=f"process {os.getpid()}"):
        j2.acquire()
    j1.release(keep_ids=True)
    assert j2.acquire() == [7]
    j2.release()
    assert not os.path.exists(j2.ids_path) and not os.path.exists(j2.lock_path)


# -- which device -------------------------------------------------------------------------------
def test_no_device_given_means_the_model_and_it_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="warpdrive.crypto")
    try:
        with Cipher("aes-cbc", K128) as a, Cipher("aes-ctr", K128, device="emu:crypto") as b:
            assert crypto.find_device() is None  # the host has no virtio-crypto on vfio-pci
            assert a.device is b.device and a.device.name == "emu:crypto"  # one per process
            assert a.encrypt(IV, PT) == NIST_CT["F.2.1"]
        assert "using the bundled device model (emu:crypto)" in caplog.text
    finally:
        crypto.close_devices()
    with pytest.raises(warpdrive.errors.InvalidArgumentError):
        Cipher("aes-cbc", K128, device=42)  # type: ignore[arg-type]


def test_device_by_vfio_user_name(shared_model: str) -> None:
    try:
        with Cipher("aes-cbc", K256, device=shared_model) as c:
            assert c.device.backend == "vfio-user"
            assert c.encrypt(IV, PT) == NIST_CT["F.2.5"]
    finally:
        crypto.close_devices()


@pytest.mark.parametrize("mode", ["cbc", "xts"])
def test_the_example_runs_on_the_model(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "data"
    src.write_bytes(os.urandom(200_000))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "examples"
                                            / "crypto_aes.py"), str(src), "--mode", mode],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "using the bundled device model (emu:crypto)" in r.stderr
    assert "round trip ok, ciphertext matches cryptography" in r.stdout
    assert "request(s) of <= 65536 bytes" in r.stdout


def test_the_example_says_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    example = str(Path(__file__).resolve().parent.parent / "examples" / "crypto_aes.py")
    short = tmp_path / "short"
    short.write_bytes(b"15 bytes, no more"[:15])
    for arg, said in ((str(tmp_path / "missing"), "cannot read"),
                      (str(tmp_path), "cannot read"), (str(short), "less than 16 bytes")):
        r = subprocess.run([sys.executable, example, arg], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        (line,) = r.stderr.strip().splitlines()[-1:]
        assert line.startswith("crypto_aes: ") and said in line and arg in line, r.stderr


def test_misuse_gets_the_libraries_errors_not_python_internals(small: warpdrive.Device) -> None:
    """Wrong types and sizes on a working Cipher: WarpdriveErrors naming the argument (a wrong
    type is also a TypeError), never struct/memoryview/attribute errors from inside."""
    c = Cipher("aes-cbc", K128, device=small)
    with pytest.raises(ArgumentTypeError, match="aes-cbc IV must be bytes, not str"):
        c.encrypt("x" * 16, PT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # (an ArgumentTypeError is one)
        c.encrypt("x" * 16, PT)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="contiguous"):
        c.encrypt(IV, memoryview(bytes(128))[::2])
    buf = c.buffer(8192)
    with pytest.raises(InvalidArgumentError, match="length -16 is negative"):
        c.prepare(buf, -16, iv=IV)
    ok = c.prepare(buf, 4096, iv=IV)
    with pytest.raises(InvalidArgumentError, match="prepared by this Cipher, not int"):
        c.submit_prepared([ok, 1])  # type: ignore[list-item]
    c.submit_prepared([ok])  # the refused batch staged nothing: `ok` is still free
    done: list[object] = []
    while not done:
        c.poll_many(done)
    assert done == [ok] and ok.ok
    with pytest.raises(ArgumentTypeError, match="DMA buffer size must be an int, not str"):
        c.buffer("4096")  # type: ignore[arg-type]
    c.close()
    with pytest.raises(ClosedError), c:  # as a closed file: `with` says so at once
        pass


@pytest.mark.parametrize("poll", [True, False])
def test_a_dead_model_is_a_lost_connection_not_a_timeout(poll: bool) -> None:
    d = warpdrive.open("emu:crypto")
    try:
        c = Cipher("aes-cbc", K128, device=d, poll=poll)
        assert c.encrypt(IV, PT) == NIST_CT["F.2.1"]
        d.emulator.proc.kill()  # the model process dies with requests about to be in flight
        d.emulator.proc.wait()
        t = time.monotonic()
        with pytest.raises(warpdrive.errors.ConnectionLostError):
            c.encrypt(IV, PT)
        assert time.monotonic() - t < 5  # not the 10 s request timeout
    finally:
        try:
            d.close()
        except warpdrive.errors.WarpdriveError:
            pass  # it is gone: closing says so
