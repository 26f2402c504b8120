"""warpdrive.crypto through guest vfio-pci, in both IOMMU modes, on two virtio-crypto functions:
QEMU's virtio-crypto-pci (builtin backend) and warpdrive's own model (served over vfio-user,
attached with QEMU's vfio-user-pci), both behind the lab's intel-iommu. References come from the
`cryptography` package; known answers from NIST SP 800-38A and IEEE 1619."""

from __future__ import annotations

import random
import select
from collections.abc import Iterator

import pytest
from crypto_vectors import (
    CTR0,
    IV,
    K128,
    K256,
    NIST,
    NIST_CT,
    PT,
    XTS,
    H,
    reference,
    xts_expected,
)
from cryptoproc import Forker

import warpdrive
from lab import virtio_crypto as vc
from warpdrive.crypto import Cipher, VirtioCrypto, algorithms, engine
from warpdrive.devices.crypto.algorithms import CipherAlgorithm
from warpdrive.errors import (
    ClosedError,
    InvalidArgumentError,
    UnsupportedError,
    WarpdriveError,
)
from warpdrive.uapi import virtio as U

pytestmark = pytest.mark.lab

TARGETS = {"qemu": "crypto_bdf", "model": "crypto_model_bdf"}


@pytest.fixture(scope="module", params=list(TARGETS))
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def bound_crypto(request: pytest.FixtureRequest, target: str) -> Iterator[str]:
    """The function on vfio-pci for this module; back on virtio-pci afterwards (once the kernel's
    self-tests are done: a function must not leave virtio_crypto while a test uses it)."""
    bdf = str(request.getfixturevalue(TARGETS[target]))
    with vc.off_kernel(bdf):
        yield bdf


@pytest.fixture
def dev(bound_crypto: str, iommu_mode: str) -> Iterator[warpdrive.Device]:
    with warpdrive.open(bound_crypto, backend=iommu_mode) as d:
        yield d
        # every test leaves the device usable and holding no sessions of closed Ciphers
        eng = engine(d)
        eng.transport.check_status()


def good_request(dev: warpdrive.Device) -> None:
    """A fresh, valid request after a refusal: the device must still work."""
    key, iv, data = bytes(range(16)), bytes(range(16, 32)), bytes(range(256)) * 4
    with Cipher("aes-cbc", key, device=dev) as c:
        assert c.encrypt(iv, data) == reference("aes-cbc", key, iv, data)


def test_algorithms_lists_what_the_device_advertises(dev: warpdrive.Device, target: str) -> None:
    assert algorithms(dev) == (["aes-cbc"] if target == "qemu" else
                               ["aes-ecb", "aes-cbc", "aes-ctr", "aes-xts"])
    cfg = engine(dev).config
    assert cfg.hw_ready and cfg.max_dataqueues == 1 and cfg.max_cipher_key_len == 64


def test_known_answers(dev: warpdrive.Device) -> None:
    """NIST SP 800-38A (ECB, CBC, CTR with AES-128/192/256) and IEEE 1619 (XTS vectors 2, 3, 4,
    10), both directions. One test per function and IOMMU mode: each open costs seconds here."""
    for section, name, key, iv, ct in NIST:
        assert reference(name, key, iv, PT) == H(ct), section  # the table itself is right
        with Cipher(name, key, device=dev) as c:
            assert c.encrypt(iv, PT).hex() == ct, section
            assert c.decrypt(iv, H(ct)) == PT, section
    for vector, key, tweak, pt, published in XTS:
        ct_x = xts_expected(key, tweak, pt, published)
        with Cipher("aes-xts", key, device=dev) as c:
            assert c.encrypt(tweak, pt) == ct_x, vector
            assert c.decrypt(tweak, ct_x) == pt, vector


def test_random_cases_match_cryptography(dev: warpdrive.Device) -> None:
    rng = random.Random(0x5EED)
    for name, key_sizes in (("aes-cbc", (16, 24, 32)), ("aes-ecb", (16, 24, 32)),
                            ("aes-ctr", (16, 24, 32)), ("aes-xts", (32, 64))):
        for ksize in key_sizes:
            key = rng.randbytes(ksize)
            with Cipher(name, key, device=dev) as c:
                for n in (16, 16 * rng.randint(2, 64), 4096, 16 * rng.randint(257, 4096)):
                    iv = rng.randbytes(16)
                    data = rng.randbytes(n)
                    ref_iv = None if name == "aes-ecb" else iv
                    ct = c.encrypt(iv, data)
                    assert ct == reference(name, key, ref_iv, data), (name, ksize, n)
                    assert c.decrypt(iv, ct) == data, (name, ksize, n)


def test_batch_many_in_flight_one_doorbell_each(dev: warpdrive.Device) -> None:
    rng = random.Random(7)
    key = rng.randbytes(32)
    eng = engine(dev)
    with Cipher("aes-cbc", key, device=dev) as c:
        # more requests than request slots: submit applies back-pressure by kicking and reaping
        cases = {}
        for _ in range(eng.nslots * 2 + 5):
            iv, data = rng.randbytes(16), rng.randbytes(16 * rng.randint(1, 256))
            cases[c.submit(iv, data)] = (iv, data)
        got = {comp.id: comp.result() for comp in c.wait()}
        assert got.keys() == cases.keys()
        for rid, (iv, data) in cases.items():
            assert got[rid] == reference("aes-cbc", key, iv, data)
        # a batch that fits: all staged first, then one doorbell for all of them
        ids = [c.submit(IV, PT) for _ in range(eng.nslots)]
        assert eng.in_flight == eng.nslots
        rung = eng.doorbells
        done = {comp.id: comp for comp in c.wait()}
        assert eng.doorbells == rung + 1
        assert set(done) == set(ids)
        want = reference("aes-cbc", key, IV, PT)
        assert all(done[i].result() == want for i in ids)


def test_results_into_caller_buffers(dev: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K256, device=dev) as c:
        out = bytearray(80)
        assert c.encrypt(IV, PT, out) is out
        assert out[:64] == NIST_CT["F.2.5"] and out[64:] == bytes(16)
        words = memoryview(bytearray(64)).cast("I")  # any writable contiguous buffer
        c.decrypt(IV, NIST_CT["F.2.5"], words)
        assert words.tobytes() == PT
        outs = [bytearray(64) for _ in range(8)]
        ids = [c.submit(IV, PT, out=o) for o in outs]
        done = {x.id: x for x in c.wait()}
        assert all(done[i].data is outs[k] and outs[k] == NIST_CT["F.2.5"]
                   for k, i in enumerate(ids))


def test_zero_copy_requests_through_the_iommu(dev: warpdrive.Device) -> None:
    """Prepared requests (issue 14): the device reads and writes the caller's DMA buffers
    through the guest IOMMU at the IOVAs warpdrive mapped, in place and into another buffer,
    resubmitted with new IVs beside copied requests; checked against `cryptography`."""
    rng = random.Random(14)
    with Cipher("aes-cbc", K256, device=dev) as c:
        sizes = [16, 64, 4096, 3 * 4096 + 32] * 3
        src, dst = c.buffer(sum(sizes) + 64), c.buffer(sum(sizes) + 64)
        reqs, places, so = [], [], 16
        for i, n in enumerate(sizes):
            inplace = i % 3 == 0
            reqs.append(c.prepare(src, n, None if inplace else dst, src_offset=so, iv=IV,
                                  dst_offset=None if inplace else so + 32))
            places.append((so, n, src if inplace else dst, so if inplace else so + 32))
            so += n
        with pytest.raises(WarpdriveError):  # held while prepared: never unmapped under them
            c.release_buffer(dst)
        for _ in range(2):
            ivs = [rng.randbytes(16) for _ in reqs]
            for r, iv in zip(reqs, ivs):
                r.set_iv(iv)
            src.view[:] = rng.randbytes(src.size)
            plain = [bytes(src.view[o:o + n]) for o, n, _, _ in places]
            copied = rng.randbytes(4096)
            rid = c.submit(IV, copied)
            c.submit_prepared(reqs)
            done = c.wait()
            assert len(done) == len(reqs) + 1 and c.failures == 0
            assert [x.result() for x in done if x.id == rid] == \
                [reference("aes-cbc", K256, IV, copied)]
            for r, iv, p, (_, n, buf, o) in zip(reqs, ivs, plain, places):
                want = reference("aes-cbc", K256, iv, p)
                assert r.ok and bytes(r.result()) == want and bytes(buf.view[o:o + n]) == want


def test_two_ciphers_share_the_queue(dev: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K128, device=dev) as a, Cipher("aes-ctr", K256, device=dev) as b:
        ia = a.submit(IV, PT)
        ib = b.submit(CTR0, PT)
        ra = a.wait()
        rb = b.wait()
        assert [(x.id, x.result()) for x in ra] == [(ia, NIST_CT["F.2.1"])]
        assert [(x.id, x.result()) for x in rb] == [(ib, NIST_CT["F.5.5"])]


def test_sessions_per_direction_and_cleanup(dev: warpdrive.Device) -> None:
    eng = engine(dev)
    before = eng.sessions
    c = Cipher("aes-cbc", K128, device=dev)
    assert len(eng.sessions) == len(before) + 1  # encrypt session up front
    c.decrypt(IV, NIST_CT["F.2.1"])
    assert len(eng.sessions) == len(before) + 2  # decrypt session on first decrypt
    c.close()
    assert eng.sessions == before
    ctr = Cipher("aes-ctr", K128, device=dev)
    assert ctr.decrypt(CTR0, NIST_CT["F.5.1"]) == PT
    assert len(eng.sessions) == len(before) + 1  # CTR: one session both ways
    ctr.close()
    assert eng.sessions == before


def test_bad_input_is_refused_and_the_device_keeps_working(dev: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K128, device=dev) as c:
        bad = {
            "wrong-key-size": lambda: Cipher("aes-cbc", bytes(20), device=dev),
            "xts-equal-halves": lambda: Cipher("aes-xts", bytes(32), device=dev),
            "misaligned-cbc": lambda: c.encrypt(IV, b"x" * 33),
            "misaligned-ctr": lambda: Cipher("aes-ctr", K128, device=dev).encrypt(IV, b"x" * 5),
            "empty": lambda: c.encrypt(IV, b""),
            "wrong-iv": lambda: c.encrypt(IV[:8], PT),
            "missing-iv": lambda: c.decrypt(None, PT),
            "unknown-algorithm": lambda: Cipher("aes-ocb", K128, device=dev),
            "not-bytes": lambda: c.encrypt(IV, "sixteen chars!!!"),  # type: ignore[arg-type]
            "out-too-small": lambda: c.encrypt(IV, PT, bytearray(32)),
            "out-read-only": lambda: c.encrypt(IV, PT, memoryview(bytes(64))),
        }
        for case, call in bad.items():
            with pytest.raises(InvalidArgumentError) as ei:
                call()
            assert isinstance(ei.value, WarpdriveError) and str(ei.value), case
            assert c.in_flight == 0, case
            assert c.encrypt(IV, PT) == NIST_CT["F.2.1"], case  # the same Cipher still works
    good_request(dev)


def test_closed_cipher(dev: warpdrive.Device) -> None:
    c = Cipher("aes-cbc", K128, device=dev)
    c.close()
    c.close()  # idempotent
    for call in (lambda: c.encrypt(IV, PT), lambda: c.decrypt(IV, PT),
                 lambda: c.submit(IV, PT)):
        with pytest.raises(ClosedError, match="closed"):
            call()
    good_request(dev)


def test_unadvertised_algorithms(dev: warpdrive.Device, target: str) -> None:
    if target == "qemu":
        # strict: refused without asking the device
        with pytest.raises(UnsupportedError, match="does not advertise aes-xts"):
            Cipher("aes-xts", K256, device=dev, strict=True)
        # default: tried; QEMU's builtin backend implements ECB/CTR/XTS but advertises CBC only
        for name, key in (("aes-ecb", K128), ("aes-ctr", K128), ("aes-xts", K256)):
            with Cipher(name, key, device=dev) as c:
                iv = None if name == "aes-ecb" else CTR0
                assert c.encrypt(iv, PT) == reference(name, key, iv, PT)
    # an algorithm the device neither advertises nor implements (single DES): the device's
    # answer becomes UnsupportedError and nothing is left behind
    des = CipherAlgorithm("des-cbc", U.VIRTIO_CRYPTO_CIPHER_DES_CBC, (8,), 8, block=8)
    eng = engine(dev)
    before = eng.sessions
    with pytest.raises(UnsupportedError, match="does not implement des-cbc") as ei:
        eng.create_session(des, bytes(range(8)), True)
    assert "advertises" in str(ei.value) and "aes-cbc" in str(ei.value)
    assert eng.sessions == before
    good_request(dev)


def test_unknown_session_destroy_is_refused_without_reaching_the_device(
        dev: warpdrive.Device) -> None:
    eng = engine(dev)
    for sid in (255, 10_000):  # QEMU 10.0's builtin backend asserts on these
        if sid in eng.sessions:
            continue
        with pytest.raises(InvalidArgumentError, match="would crash QEMU"):
            eng.destroy_session(sid)
    good_request(dev)


def test_device_close_closes_the_engine(bound_crypto: str, iommu_mode: str) -> None:
    with warpdrive.open(bound_crypto, backend=iommu_mode) as d:
        c = Cipher("aes-cbc", K128, device=d)
        eng = engine(d)
        assert c.encrypt(IV, PT) == NIST_CT["F.2.1"]
    assert eng.closed and not eng.sessions  # sessions destroyed before the reset
    with pytest.raises(ClosedError):
        c.encrypt(IV, PT)
    c.close()
    # and the function opens again cleanly
    with warpdrive.open(bound_crypto, backend=iommu_mode) as d, \
            Cipher("aes-cbc", K128, device=d) as c2:
        assert c2.encrypt(IV, PT) == NIST_CT["F.2.1"]


@pytest.mark.parametrize("name,ksize", [("aes-ecb", 16), ("aes-cbc", 24), ("aes-ctr", 32),
                                        ("aes-xts", 64)])
def test_requests_longer_than_a_slot(dev: warpdrive.Device, name: str, ksize: int) -> None:
    rng = random.Random(ksize)
    key, iv = rng.randbytes(ksize), rng.randbytes(16)
    data = rng.randbytes(3 * 65536 + 48)  # CBC/CTR/ECB: four pieces; XTS: one data unit
    ref_iv = None if name == "aes-ecb" else iv
    with Cipher(name, key, device=dev) as c:
        ct = c.encrypt(iv, data)
        assert ct == reference(name, key, ref_iv, data)
        assert c.decrypt(iv, ct) == data


def test_waiting_on_msix_instead_of_polling(dev: warpdrive.Device) -> None:
    eng = engine(dev)
    assert eng.can_sleep
    q, irq = eng.dataq, eng._data_irq
    assert q is not None and irq is not None
    rng = random.Random(3)
    with Cipher("aes-cbc", K256, device=dev, poll=False) as c:
        # The vector works: interrupts asked for, one request, and nothing but the eventfd
        # watched (a waiter may find its request done before it ever sleeps).
        irq.poll()  # forget earlier counts
        q.want_interrupts(True)
        try:
            rid = c.submit(IV, PT)
            c.flush()
            ready, _, _ = select.select([irq.fd], [], [], 10.0)
            assert ready, "the device's MSI-X never reached the eventfd"
            assert irq.poll() >= 1
        finally:
            q.want_interrupts(False)
        assert [(x.id, x.result()) for x in c.wait()] == [(rid, NIST_CT["F.2.5"])]
        cases = {c.submit(iv, d): (iv, d) for iv, d in
                 ((rng.randbytes(16), rng.randbytes(65536)) for _ in range(16))}
        got = {x.id: x.result() for x in c.wait()}  # asleep between completions, if it must
        assert got == {i: reference("aes-cbc", K256, iv, d) for i, (iv, d) in cases.items()}
        assert c.encrypt(IV, PT) == NIST_CT["F.2.5"]
    assert q._avail[0] == U.VRING_AVAIL_F_NO_INTERRUPT  # asked for only while someone sleeps


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    """The dying processes are forked from a small helper process, not from pytest: a fork of
    pytest copies its hundreds of mappings, and the child's DMA-map checks walk them all (on
    7.3 about 7 s a death in the guest, against 1.3 s from the helper)."""
    with Forker() as f:
        yield f


@pytest.mark.slow
def test_sessions_of_dead_processes_are_destroyed(bound_crypto: str, iommu_mode: str,
                                                  target: str, forker: Forker) -> None:
    """QEMU's builtin backend has 256 sessions and its reset frees none: every process that
    dies holding sessions leaks them, unless the next owner destroys them. Here three processes
    die holding 88 sessions each, 264 in all (without the journal the third could not create all
    of its sessions). The model forgets its
    sessions in a reset, as a reset device should (tests/test_crypto_driver.py runs it QEMU's
    way, keep_sessions=1, 260 deaths): there two deaths show that the next owner still empties
    the journal of sessions the device no longer has, and goes on."""
    # The fewest deaths that pass 256 sessions: each death (fork, open, virtio bring-up, kill,
    # reset) costs about a second of TCG CPU, a session (created, journalled, destroyed by the
    # next owner) about 10 ms.
    # (On the model, whose server logs each destroy of a session it forgot, one Cipher each.)
    deaths, ciphers = (3, 44) if target == "qemu" else (2, 1)
    for i in range(deaths):
        said = forker.die_holding_sessions(bound_crypto, backend=iommu_mode, ciphers=ciphers)
        assert said == "ok", f"death {i}: {said}"
    with warpdrive.open(bound_crypto, backend=iommu_mode) as d:
        eng = VirtioCrypto.of(d)
        assert len(eng.reclaimed) == 2 * ciphers  # the last death's, destroyed here
        with Cipher("aes-cbc", K256, device=d) as c:
            assert c.encrypt(IV, PT) == NIST_CT["F.2.5"]
