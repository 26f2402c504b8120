"""warpdrive.crypto against QEMU's virtio-crypto-pci (builtin backend) behind the lab's intel-iommu,
bound to vfio-pci, in both IOMMU modes. References come from the `cryptography` package."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher as RefCipher
from cryptography.hazmat.primitives.ciphers import algorithms as ref_alg
from cryptography.hazmat.primitives.ciphers import modes as ref_modes

import warpdrive
from warpdrive import binding
from warpdrive.crypto import Cipher, algorithms, engine
from warpdrive.devices.crypto.algorithms import CipherAlgorithm
from warpdrive.errors import (
    ClosedError,
    InvalidArgumentError,
    UnsupportedError,
    WarpdriveError,
)
from warpdrive.uapi import virtio as U

pytestmark = pytest.mark.lab

H = bytes.fromhex
# NIST SP 800-38A, appendix F: the four-block plaintext and key/IV/counter blocks.
PT = H("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
       "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
K128 = H("2b7e151628aed2a6abf7158809cf4f3c")
K256 = H("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
IV = H("000102030405060708090a0b0c0d0e0f")
CTR0 = H("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST = [  # (section, algorithm, key, iv, ciphertext)
    ("F.1.1", "aes-ecb", K128, None,
     "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf"
     "43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4"),
    ("F.1.5", "aes-ecb", K256, None,
     "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870"
     "b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7"),
    ("F.2.1", "aes-cbc", K128, IV,
     "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
     "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"),
    ("F.2.5", "aes-cbc", K256, IV,
     "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
     "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"),
    ("F.5.1", "aes-ctr", K128, CTR0,
     "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
     "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"),
    ("F.5.5", "aes-ctr", K256, CTR0,
     "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
     "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"),
]


def reference(name: str, key: bytes, iv: bytes | None, data: bytes, decrypt: bool = False) -> bytes:
    mode = {"aes-ecb": lambda: ref_modes.ECB(), "aes-cbc": lambda: ref_modes.CBC(iv),
            "aes-ctr": lambda: ref_modes.CTR(iv), "aes-xts": lambda: ref_modes.XTS(iv)}[name]()
    c = RefCipher(ref_alg.AES(key), mode)
    ctx = c.decryptor() if decrypt else c.encryptor()
    return ctx.update(data) + ctx.finalize()


@pytest.fixture(scope="module")
def bound_crypto(crypto_bdf: str) -> Iterator[str]:
    """The virtio-crypto function on vfio-pci for this module; back on virtio-pci afterwards."""
    with binding.bound_to(crypto_bdf):
        yield crypto_bdf


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


def test_algorithms_lists_what_qemu_advertises(dev: warpdrive.Device) -> None:
    assert algorithms(dev) == ["aes-cbc"]
    cfg = engine(dev).config
    assert cfg.hw_ready and cfg.max_dataqueues == 1 and cfg.max_cipher_key_len == 64


@pytest.mark.parametrize("section,name,key,iv,ct", NIST, ids=[v[0] for v in NIST])
def test_nist_sp800_38a(dev: warpdrive.Device, section: str, name: str, key: bytes,
                        iv: bytes | None, ct: str) -> None:
    assert reference(name, key, iv, PT) == H(ct)  # the table itself is right
    with Cipher(name, key, device=dev) as c:
        assert c.encrypt(iv, PT).hex() == ct
        assert c.decrypt(iv, H(ct)) == PT


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
        assert out[:64] == H(NIST[3][4]) and out[64:] == bytes(16)
        words = memoryview(bytearray(64)).cast("I")  # any writable contiguous buffer
        c.decrypt(IV, H(NIST[3][4]), words)
        assert words.tobytes() == PT
        outs = [bytearray(64) for _ in range(8)]
        ids = [c.submit(IV, PT, out=o) for o in outs]
        done = {x.id: x for x in c.wait()}
        assert all(done[i].data is outs[k] and outs[k] == H(NIST[3][4])
                   for k, i in enumerate(ids))


def test_two_ciphers_share_the_queue(dev: warpdrive.Device) -> None:
    with Cipher("aes-cbc", K128, device=dev) as a, Cipher("aes-ctr", K256, device=dev) as b:
        ia = a.submit(IV, PT)
        ib = b.submit(CTR0, PT)
        ra = a.wait()
        rb = b.wait()
        assert [(x.id, x.result()) for x in ra] == [(ia, H(NIST[2][4]))]
        assert [(x.id, x.result()) for x in rb] == [(ib, H(NIST[5][4]))]


def test_sessions_per_direction_and_cleanup(dev: warpdrive.Device) -> None:
    eng = engine(dev)
    before = eng.sessions
    c = Cipher("aes-cbc", K128, device=dev)
    assert len(eng.sessions) == len(before) + 1  # encrypt session up front
    c.decrypt(IV, H(NIST[2][4]))
    assert len(eng.sessions) == len(before) + 2  # decrypt session on first decrypt
    c.close()
    assert eng.sessions == before
    ctr = Cipher("aes-ctr", K128, device=dev)
    assert ctr.decrypt(CTR0, H(NIST[4][4])) == PT
    assert len(eng.sessions) == len(before) + 1  # CTR: one session both ways
    ctr.close()
    assert eng.sessions == before


@pytest.mark.parametrize("case", [
    "wrong-key-size", "xts-equal-halves", "misaligned-cbc", "misaligned-ctr", "empty",
    "wrong-iv", "missing-iv", "too-large", "unknown-algorithm", "not-bytes", "out-too-small",
    "out-read-only",
])
def test_bad_input_is_refused_and_the_device_keeps_working(dev: warpdrive.Device,
                                                           case: str) -> None:
    with Cipher("aes-cbc", K128, device=dev) as c:
        bad = {
            "wrong-key-size": lambda: Cipher("aes-cbc", bytes(20), device=dev),
            "xts-equal-halves": lambda: Cipher("aes-xts", bytes(32), device=dev),
            "misaligned-cbc": lambda: c.encrypt(IV, b"x" * 33),
            "misaligned-ctr": lambda: Cipher("aes-ctr", K128, device=dev).encrypt(IV, b"x" * 5),
            "empty": lambda: c.encrypt(IV, b""),
            "wrong-iv": lambda: c.encrypt(IV[:8], PT),
            "missing-iv": lambda: c.decrypt(None, PT),
            "too-large": lambda: c.encrypt(IV, bytes(c.max_request + 16)),
            "unknown-algorithm": lambda: Cipher("aes-ocb", K128, device=dev),
            "not-bytes": lambda: c.encrypt(IV, "sixteen chars!!!"),  # type: ignore[arg-type]
            "out-too-small": lambda: c.encrypt(IV, PT, bytearray(32)),
            "out-read-only": lambda: c.encrypt(IV, PT, memoryview(bytes(64))),
        }[case]
        with pytest.raises(InvalidArgumentError) as ei:
            bad()
        assert isinstance(ei.value, WarpdriveError) and str(ei.value)
        assert c.in_flight == 0
        assert c.encrypt(IV, PT) == H(NIST[2][4])  # the same Cipher still works
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


def test_unadvertised_algorithms(dev: warpdrive.Device) -> None:
    # strict: refused without asking the device
    with pytest.raises(UnsupportedError, match="does not advertise aes-xts"):
        Cipher("aes-xts", K256, device=dev, strict=True)
    # default: tried; QEMU's builtin backend implements ECB/CTR/XTS although it advertises CBC
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
    assert "advertises aes-cbc" in str(ei.value)
    assert eng.sessions == before
    good_request(dev)


def test_unknown_session_destroy_is_refused_without_reaching_qemu(dev: warpdrive.Device) -> None:
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
        assert c.encrypt(IV, PT) == H(NIST[2][4])
    assert eng.closed and not eng.sessions  # sessions destroyed before the reset
    with pytest.raises(ClosedError):
        c.encrypt(IV, PT)
    c.close()
    # and the function opens again cleanly
    with warpdrive.open(bound_crypto, backend=iommu_mode) as d, \
            Cipher("aes-cbc", K128, device=d) as c2:
        assert c2.encrypt(IV, PT) == H(NIST[2][4])
