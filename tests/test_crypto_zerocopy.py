"""Zero-copy crypto requests (issue 14) on the bundled model over vfio-user: `Cipher.buffer`,
`prepare`, `submit_prepared`, completions handed back by `poll_many` as the requests themselves,
and every check that protects the caller (bounds, the buffers' mappings held, ownership and "not
in flight", the fork guard). Results are judged by `cryptography`."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from crypto_vectors import IV, K128, K256, NIST_CT, PT, reference
from forkchild import run_in_child

import warpdrive
from warpdrive.crypto import Cipher, Completion, Request, VirtioCrypto, engine
from warpdrive.errors import (
    ClosedError,
    DeviceBusyError,
    DeviceError,
    ForkedContextError,
    InvalidArgumentError,
)
from warpdrive.memory import DmaBuffer

MODES = [("aes-ecb", 16), ("aes-cbc", 24), ("aes-ctr", 32), ("aes-xts", 64)]


@pytest.fixture(scope="module")
def small() -> Iterator[warpdrive.Device]:
    """4 KiB slots on a 64-entry ring (15 slots): batches wrap the rings, and a zero-copy
    request may be longer than a slot."""
    with warpdrive.open("emu:crypto") as d:
        VirtioCrypto.of(d, max_request=4096, ring_size=64)
        yield d


def run(c: Cipher, reqs: list[Request]) -> None:
    c.submit_prepared(reqs)
    got: list[Completion | Request] = []
    while len(got) < len(reqs):
        c.poll_many(got)
    assert sorted(map(id, got)) == sorted(map(id, reqs))  # the requests themselves come back


def test_the_nist_vector_zero_copy(small: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K256, device=small) as c:
        src, dst = c.buffer(len(PT)), c.buffer(len(PT))
        src.view[:len(PT)] = PT
        r = c.prepare(src, len(PT), dst, iv=IV)
        assert r.data is None and not r.in_flight
        run(c, [r])
        assert r.ok and bytes(r.result()) == NIST_CT["F.2.5"]
        assert bytes(src.view[:len(PT)]) == PT  # the source untouched
        back = c.prepare(dst, len(PT), iv=IV, decrypt=True)  # in place
        run(c, [back])
        assert bytes(dst.view[:len(PT)]) == PT


@pytest.mark.parametrize("name,ksize", MODES, ids=[m[0] for m in MODES])
def test_prepared_requests_match_cryptography_resubmitted_over_every_slot(
        small: warpdrive.Device, name: str, ksize: int) -> None:
    """Requests of several sizes (one longer than a slot: zero-copy data never goes through
    one), at offsets, resubmitted round after round with new IVs and new data, so each lands
    on many slots; copied requests share the batches and the slots, and come back from the
    same poll_many as Completions."""
    rng = random.Random(ksize)
    key = rng.randbytes(ksize)
    with Cipher(name, key, device=small) as c:
        sizes = [16, 64, 4096, 3 * 4096 + 32, 512] * 4
        src, dst = c.buffer(sum(sizes) + 64), c.buffer(sum(sizes) + 128)
        reqs, offs = [], []
        so, do = 16, 48
        for n in sizes:
            reqs.append(c.prepare(src, n, dst, src_offset=so, dst_offset=do, iv=IV))
            offs.append((so, do))
            so, do = so + n, do + n
        iv_of = {}
        for rnd in range(4):
            for r in reqs:
                iv_of[id(r)] = rng.randbytes(16)
                r.set_iv(iv_of[id(r)])
            src.view[:] = rng.randbytes(src.size)
            dst.view[:] = bytes(dst.size)
            copied = [rng.randbytes(16 * rng.randrange(1, 300)) for _ in range(5)]
            first = c.submit_many([IV] * 5, copied)
            c.submit_prepared(reqs[:7])
            c.submit_prepared(reqs[7:])
            got: list[Completion | Request] = []
            while len(got) < len(reqs) + 5:
                c.poll_many(got)
            assert c.in_flight == 0
            for x in got:
                if isinstance(x, Completion):
                    assert x.result() == reference(name, key, None if name == "aes-ecb" else IV,
                                                   copied[x.id - first])
            for r, n, (so, do) in zip(reqs, sizes, offs):
                iv = None if name == "aes-ecb" else iv_of[id(r)]
                want = reference(name, key, iv, bytes(src.view[so:so + n]))
                assert r.ok and bytes(r.result()) == want, (rnd, n)
                assert bytes(dst.view[do:do + n]) == want  # where it was asked to go
        assert bytes(dst.view[:48]) == bytes(48)  # nothing written outside the destinations
        assert c.failures == 0


def test_prepare_checks_everything_once(small: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K128, device=small) as c, \
            warpdrive.open("emu:crypto") as other:
        buf = c.buffer(4096)
        with pytest.raises(InvalidArgumentError, match="overrun"):
            c.prepare(buf, 4096, src_offset=16)
        with pytest.raises(InvalidArgumentError, match="overrun"):
            c.prepare(buf, 64, buf, dst_offset=4096 - 48)
        with pytest.raises(InvalidArgumentError, match="overrun"):
            c.prepare(buf, 64, src_offset=-16)
        for bad in (0, 15, 100):
            with pytest.raises(InvalidArgumentError):
                c.prepare(buf, bad, iv=IV)
        with pytest.raises(InvalidArgumentError):
            c.prepare(buf, 64, iv=b"short")
        with pytest.raises(InvalidArgumentError, match="DmaBuffer"):
            c.prepare(bytearray(64), 64, iv=IV)  # type: ignore[arg-type]
        loose = DmaBuffer.allocate(4096)  # never mapped for any device
        foreign = other.dma.alloc(4096)  # mapped, but for another device
        try:
            for b in (loose, foreign):
                with pytest.raises(InvalidArgumentError, match="not mapped in"):
                    c.prepare(b, 64, iv=IV)
                with pytest.raises(InvalidArgumentError, match="not mapped in"):
                    c.prepare(buf, 64, b, iv=IV)
        finally:
            loose.close()
        ro = small.dma.alloc(4096, writable=False)
        with pytest.raises(InvalidArgumentError, match="read-only"):
            c.prepare(buf, 64, ro, iv=IV)
        small.dma.unmap(ro)
        ro.close()
        assert c.prepare(buf, 4096, iv=IV).n == 4096


def test_ownership_in_flight_and_release(small: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K128, device=small) as a, Cipher("aes-cbc", K128, device=small) as b:
        buf = a.buffer(8192)
        r1 = a.prepare(buf, 4096, iv=IV)
        r2 = a.prepare(buf, 4096, src_offset=4096, iv=IV)
        mine = b.prepare(b.buffer(64), 64, iv=IV)
        eng = engine(small)
        free = eng.free_slots
        with pytest.raises(InvalidArgumentError, match="prepared by this Cipher"):
            a.submit_prepared([r1, mine])
        with pytest.raises(InvalidArgumentError, match="appears twice"):
            a.submit_prepared([r1, r2, r1])
        assert eng.free_slots == free and a.in_flight == 0  # all or nothing: none staged
        a.submit_prepared([r1])
        assert r1.in_flight and a.in_flight == 1 and r1.data is None
        with pytest.raises(InvalidArgumentError, match="in flight"):
            a.submit_prepared([r2, r1])
        with pytest.raises(InvalidArgumentError, match="once it completed"):
            r1.set_iv(IV)
        with pytest.raises(DeviceBusyError, match="in flight"):
            r1.release()
        with pytest.raises(DeviceError, match="in flight"):
            r1.result()
        with pytest.raises(DeviceBusyError):  # held by the requests: never unmapped under them
            a.release_buffer(buf)
        a.wait()
        assert r1.ok and a.in_flight == 0
        r1.release()
        with pytest.raises(InvalidArgumentError, match="released"):
            a.submit_prepared([r1])
        with pytest.raises(DeviceBusyError):
            a.release_buffer(buf)  # r2 still holds it
        r2.release()
        a.release_buffer(buf)
        with pytest.raises(InvalidArgumentError, match="buffer\\(\\)"):
            a.release_buffer(buf)


def test_a_failed_request_is_counted_and_says_why(small: warpdrive.Device) -> None:
    eng = engine(small)
    with Cipher("aes-ctr", K128, device=small) as c:
        buf = c.buffer(64)
        r = c.prepare(buf, 64, iv=IV)
        eng.destroy_session(c._sessions[True])  # the device now answers INVSESS
        run(c, [r])
        assert not r.ok and c.failures == 1 and r.data is None
        with pytest.raises(DeviceError, match="INVSESS"):
            r.result()
        c._sessions.clear()
    eng.transport.check_status()


def test_close_waits_and_lets_the_buffers_go(small: warpdrive.Device) -> None:
    c = Cipher("aes-cbc", K128, device=small)
    buf = c.buffer(4096)
    buf.view[:4096] = bytes(range(256)) * 16
    r = c.prepare(buf, 4096, iv=IV)
    c.submit_prepared([r])
    c.close()  # waits for r, releases its holds, frees the buffer
    assert r.ok and buf.closed
    with pytest.raises(ClosedError):
        c.submit_prepared([r])
    with pytest.raises(ClosedError):
        c.prepare(buf, 16)


def test_a_forked_child_cannot_submit(small: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K128, device=small) as c:
        r = c.prepare(c.buffer(64), 64, iv=IV)
        def child() -> int:
            try:
                c.submit_prepared([r])
            except ForkedContextError:
                return 0
            return 1

        assert run_in_child(child) == 0
        assert not r.in_flight  # the parent's request is as it was
        run(c, [r])
        assert r.ok
