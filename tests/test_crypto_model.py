"""The virtio-crypto device model (`warpdrive emu crypto`): its pure parts alone (the cipher
service; the split ring over a plain bytearray standing in for client memory, a fake that is
fine for pure parsing logic), then the whole function over vfio-user, driven by warpdrive's
virtio-crypto driver: NIST SP 800-38A and IEEE 1619 vectors, `cryptography` on random cases, and
the transport's rules (feature negotiation, vectors, reset, PCI_CFG window)."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest
from crypto_vectors import CTR0, IV, K128, K256, NIST, NIST_CT, PT, XTS, H, reference, xts_expected

import warpdrive
from warpdrive.crypto import Cipher, algorithms, engine
from warpdrive.emu.models.crypto import layout as CL
from warpdrive.emu.models.crypto.service import CryptoService, RequestError
from warpdrive.emu.virtio import layout as VL
from warpdrive.emu.virtio.vring import DeviceVirtqueue, VirtqueueError
from warpdrive.errors import DeviceError

ALL = frozenset((CL.CIPHER_AES_ECB, CL.CIPHER_AES_CBC, CL.CIPHER_AES_CTR, CL.CIPHER_AES_XTS))


# -- the cipher service alone ------------------------------------------------------------------
def status_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except RequestError as e:
        return e.status
    return CL.OK


def test_service_sessions_and_statuses() -> None:
    svc = CryptoService(algorithms=ALL, max_sessions=3)
    enc = svc.create(CL.CIPHER_AES_CBC, K128, CL.OP_ENCRYPT)
    dec = svc.create(CL.CIPHER_AES_CBC, K128, CL.OP_DECRYPT)
    assert svc.cipher(CL.CIPHER_ENCRYPT, enc, IV, PT) == NIST_CT["F.2.1"]
    assert svc.cipher(CL.CIPHER_DECRYPT, dec, IV, NIST_CT["F.2.1"]) == PT
    # the session's direction decides; a request for the other one contradicts it
    assert status_of(svc.cipher, CL.CIPHER_DECRYPT, enc, IV, PT) == CL.ERR
    assert status_of(svc.cipher, CL.CIPHER_ENCRYPT, 99, IV, PT) == CL.INVSESS
    assert status_of(svc.cipher, CL.CIPHER_ENCRYPT, enc, IV, PT[:20]) == CL.ERR  # not blocks
    assert status_of(svc.cipher, CL.CIPHER_ENCRYPT, enc, IV[:8], PT) == CL.ERR  # short IV
    assert status_of(svc.create, 1, K128, CL.OP_ENCRYPT) == CL.NOTSUPP  # ARC4
    assert status_of(svc.create, CL.CIPHER_AES_CBC, K128[:15], CL.OP_ENCRYPT) == CL.ERR
    assert status_of(svc.create, CL.CIPHER_AES_XTS, bytes(32), CL.OP_ENCRYPT) == CL.ERR
    assert status_of(svc.create, CL.CIPHER_AES_CBC, K128, 3) == CL.ERR
    svc.create(CL.CIPHER_AES_ECB, K128, CL.OP_ENCRYPT)
    # without REVISION_1 there is no NOSPC: a full table is ERR (as QEMU at 256)
    assert status_of(svc.create, CL.CIPHER_AES_ECB, K128, CL.OP_ENCRYPT) == CL.ERR
    svc.destroy(enc)
    assert status_of(svc.destroy, enc) == CL.ERR
    fresh = svc.create(CL.CIPHER_AES_ECB, K128, CL.OP_ENCRYPT)
    assert fresh not in (enc, dec)  # ids are never reused: a stale id is INVSESS, not a key
    assert status_of(svc.cipher, CL.CIPHER_ENCRYPT, enc, IV, PT) == CL.INVSESS


def test_service_modes_match_cryptography() -> None:
    svc = CryptoService(algorithms=ALL)
    rng = random.Random(1)
    for algo, name, ksizes in ((CL.CIPHER_AES_ECB, "aes-ecb", (16, 24, 32)),
                               (CL.CIPHER_AES_CBC, "aes-cbc", (16, 24, 32)),
                               (CL.CIPHER_AES_CTR, "aes-ctr", (16, 24, 32)),
                               (CL.CIPHER_AES_XTS, "aes-xts", (32, 64))):
        for k in ksizes:
            key, iv = rng.randbytes(k), rng.randbytes(16)
            data = rng.randbytes(16 * rng.randint(1, 300) + (5 if name in ("aes-ctr",
                                                                            "aes-xts") else 0))
            e = svc.create(algo, key, CL.OP_ENCRYPT)
            d = svc.create(algo, key, CL.OP_DECRYPT)
            ref_iv = None if name == "aes-ecb" else iv
            ct = svc.cipher(CL.CIPHER_ENCRYPT, e, iv, data)  # ECB: any IV is ignored
            assert ct == reference(name, key, ref_iv, data)
            assert svc.cipher(CL.CIPHER_DECRYPT, d, iv, ct) == data


def test_service_offers_only_what_it_is_told() -> None:
    svc = CryptoService(algorithms=frozenset({CL.CIPHER_AES_CBC}))
    assert status_of(svc.create, CL.CIPHER_AES_ECB, K128, CL.OP_ENCRYPT) == CL.NOTSUPP


# -- the split ring over a bytearray -----------------------------------------------------------
class Mem:
    """Client memory for pure ring tests: IOVA = offset into a bytearray."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.b = bytearray(size)

    def read(self, iova: int, size: int) -> bytes:
        return bytes(self.b[iova:iova + size])

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        self.b[iova:iova + len(data)] = data


DESC, AVAIL, USED, TABLE = 0x0000, 0x1000, 0x2000, 0x3000
SIZE = 8


def put_desc(m: Mem, i: int, addr: int, length: int, flags: int, nxt: int = 0,
             table: int = DESC) -> None:
    m.write(table + 16 * i, VL.DESC.pack(addr, length, flags, nxt))


def make_avail(m: Mem, *heads: int, flags: int = 0, used_event: int = 0) -> None:
    m.write(AVAIL, struct.pack("<HH", flags, len(heads)))
    for k, h in enumerate(heads):
        m.write(AVAIL + 4 + 2 * k, struct.pack("<H", h))
    m.write(AVAIL + 4 + 2 * SIZE, struct.pack("<H", used_event))


def ring(m: Mem, *, indirect: bool = True, event_idx: bool = False) -> DeviceVirtqueue:
    return DeviceVirtqueue(m, 0, SIZE, DESC, AVAIL, USED, indirect=indirect, event_idx=event_idx)


def test_ring_chain_readable_then_writable_and_stream_access() -> None:
    m = Mem()
    put_desc(m, 3, 0x8000, 5, VL.DESC_F_NEXT, 1)
    put_desc(m, 1, 0x9000, 7, VL.DESC_F_NEXT, 6)
    put_desc(m, 6, 0xA000, 4, VL.DESC_F_WRITE | VL.DESC_F_NEXT, 0)
    put_desc(m, 0, 0xB000, 2, VL.DESC_F_WRITE)
    m.write(0x8000, b"hello")
    m.write(0x9000, b" world!")
    make_avail(m, 3)
    q = ring(m)
    assert q.available() == 1
    c = q.pop()
    assert (c.head, c.readable_len, c.writable_len) == (3, 12, 6)
    assert c.read(m, 3, 6) == b"lo wor"  # one stream across descriptors
    c.write(m, 2, b"WXYZ")  # across the two writable buffers
    assert m.read(0xA002, 2) == b"WX" and m.read(0xB000, 2) == b"YZ"
    with pytest.raises(IndexError):
        c.read(m, 10, 3)
    assert q.available() == 0


def test_ring_indirect_table_after_direct_descriptors() -> None:
    m = Mem()
    put_desc(m, 0, 0x8000, 72, VL.DESC_F_NEXT, 1)
    put_desc(m, 1, TABLE, 32, VL.DESC_F_INDIRECT)  # spec: zero or more direct, then INDIRECT
    put_desc(m, 0, 0x9000, 16, VL.DESC_F_NEXT, 1, table=TABLE)
    put_desc(m, 1, 0xA000, 17, VL.DESC_F_WRITE, table=TABLE)
    make_avail(m, 0)
    c = ring(m).pop()
    assert [(s.addr, s.length) for s in c.readable] == [(0x8000, 72), (0x9000, 16)]
    assert [(s.addr, s.length) for s in c.writable] == [(0xA000, 17)]


@pytest.mark.parametrize("case", ["loop", "readable-after-writable", "next-out-of-range",
                                  "indirect-not-negotiated", "nested-indirect",
                                  "indirect-and-next", "indirect-bad-length", "head-out-of-range",
                                  "avail-too-far"])
def test_ring_rule_breaks_are_errors(case: str) -> None:
    m = Mem()
    indirect = case != "indirect-not-negotiated"
    if case == "loop":
        put_desc(m, 0, 0x8000, 1, VL.DESC_F_NEXT, 1)
        put_desc(m, 1, 0x8000, 1, VL.DESC_F_NEXT, 0)
    elif case == "readable-after-writable":
        put_desc(m, 0, 0x8000, 1, VL.DESC_F_WRITE | VL.DESC_F_NEXT, 1)
        put_desc(m, 1, 0x8000, 1, 0)
    elif case == "next-out-of-range":
        put_desc(m, 0, 0x8000, 1, VL.DESC_F_NEXT, SIZE)
    elif case in ("indirect-not-negotiated", "nested-indirect"):
        put_desc(m, 0, TABLE, 16, VL.DESC_F_INDIRECT)
        put_desc(m, 0, TABLE, 16, VL.DESC_F_INDIRECT, table=TABLE)
    elif case == "indirect-and-next":
        put_desc(m, 0, TABLE, 16, VL.DESC_F_INDIRECT | VL.DESC_F_NEXT, 1)
    elif case == "indirect-bad-length":
        put_desc(m, 0, TABLE, 20, VL.DESC_F_INDIRECT)
    make_avail(m, SIZE if case == "head-out-of-range" else 0)
    if case == "avail-too-far":
        m.write(AVAIL + 2, struct.pack("<H", SIZE + 1))
        with pytest.raises(VirtqueueError, match="ahead"):
            ring(m, indirect=indirect).available()
        return
    q = ring(m, indirect=indirect)
    assert q.available() == 1
    with pytest.raises(VirtqueueError):
        q.pop()


def test_ring_used_elements_then_index_and_interrupt_suppression() -> None:
    m = Mem()
    for i in range(3):
        put_desc(m, i, 0x8000, 1, VL.DESC_F_WRITE)
    make_avail(m, 0, 1, 2, flags=VL.AVAIL_F_NO_INTERRUPT)
    q = ring(m)
    chains = [q.pop() for _ in range(3)]
    for k, c in enumerate(chains):
        q.push(c, 10 + k)
    assert struct.unpack_from("<H", m.b, USED + 2)[0] == 0  # nothing visible before publish
    assert q.publish() is False  # the driver polls: NO_INTERRUPT
    assert struct.unpack_from("<HH", m.b, USED) == (0, 3)
    assert [struct.unpack_from("<II", m.b, USED + 4 + 8 * k) for k in range(3)] == \
        [(0, 10), (1, 11), (2, 12)]
    assert q.publish() is False  # nothing pending
    # EVENT_IDX: interrupt only when used idx passes used_event (spec's vring_need_event)
    m2 = Mem()
    for i in range(4):
        put_desc(m2, i, 0x8000, 1, VL.DESC_F_WRITE)
    make_avail(m2, 0, 1, 2, 3, used_event=1)
    q2 = ring(m2, event_idx=True)
    q2.push(q2.pop(), 0)
    assert q2.publish() is False  # used idx 1 has not passed used_event 1
    q2.push(q2.pop(), 0)
    assert q2.publish() is True  # entry 1 written: idx reaches used_event + 1
    q2.push(q2.pop(), 0)
    assert q2.publish() is False


# -- the whole function over vfio-user ---------------------------------------------------------
@pytest.fixture(scope="module")
def dev() -> Iterator[warpdrive.Device]:
    with warpdrive.open("emu:crypto") as d:
        yield d


@pytest.fixture
def checked(dev: warpdrive.Device) -> Iterator[warpdrive.Device]:
    yield dev
    engine(dev).transport.check_status()  # nothing a test did broke the device


def test_model_advertises_its_ciphers(checked: warpdrive.Device) -> None:
    assert algorithms(checked) == ["aes-ecb", "aes-cbc", "aes-ctr", "aes-xts"]
    cfg = engine(checked).config
    assert cfg.hw_ready and cfg.max_dataqueues == 1 and cfg.max_cipher_key_len == 64
    assert checked.vendor_id == 0x1AF4 and checked.device_id == 0x1054


@pytest.mark.parametrize("section,name,key,iv,ct", NIST, ids=[v[0] for v in NIST])
def test_nist_sp800_38a_through_the_model(checked: warpdrive.Device, section: str, name: str,
                                          key: bytes, iv: bytes | None, ct: str) -> None:
    assert reference(name, key, iv, PT) == H(ct)  # the table itself is right
    with Cipher(name, key, device=checked) as c:
        assert c.encrypt(iv, PT).hex() == ct
        assert c.decrypt(iv, H(ct)) == PT  # F.x.2/4/6: the decrypt vectors


@pytest.mark.parametrize("vector,key,tweak,pt,published", XTS, ids=[f"v{v[0]}" for v in XTS])
def test_ieee1619_xts_through_the_model(checked: warpdrive.Device, vector: str, key: bytes,
                                        tweak: bytes, pt: bytes, published: str) -> None:
    ct = xts_expected(key, tweak, pt, published)
    with Cipher("aes-xts", key, device=checked) as c:
        assert c.encrypt(tweak, pt) == ct
        assert c.decrypt(tweak, ct) == pt


def test_random_cases_match_cryptography(checked: warpdrive.Device) -> None:
    rng = random.Random(0x5EED)
    for name, key_sizes in (("aes-cbc", (16, 24, 32)), ("aes-ecb", (16, 24, 32)),
                            ("aes-ctr", (16, 24, 32)), ("aes-xts", (32, 64))):
        for ksize in key_sizes:
            key = rng.randbytes(ksize)
            with Cipher(name, key, device=checked) as c:
                for n in (16, 16 * rng.randint(2, 64), 4096, 16 * rng.randint(257, 4096)):
                    iv, data = rng.randbytes(16), rng.randbytes(n)
                    ct = c.encrypt(iv, data)
                    assert ct == reference(name, key, None if name == "aes-ecb" else iv, data)
                    assert c.decrypt(iv, ct) == data


def test_batches_and_two_ciphers_share_the_queue(checked: warpdrive.Device) -> None:
    rng = random.Random(7)
    eng = engine(checked)
    with Cipher("aes-cbc", K256, device=checked) as a, \
            Cipher("aes-ctr", K128, device=checked) as b:
        cases = {}
        for _ in range(eng.nslots * 2 + 5):  # more than the slots: back-pressure
            iv, data = rng.randbytes(16), rng.randbytes(16 * rng.randint(1, 64))
            cases[a.submit(iv, data)] = (iv, data)
        ib = b.submit(CTR0, PT)
        got = {x.id: x.result() for x in a.wait()}
        assert got == {rid: reference("aes-cbc", K256, iv, d) for rid, (iv, d) in cases.items()}
        assert [(x.id, x.result()) for x in b.wait()] == [(ib, NIST_CT["F.5.1"])]


def test_a_bad_session_is_a_status_and_the_device_keeps_working(
        checked: warpdrive.Device) -> None:
    from warpdrive.devices.crypto.algorithms import lookup

    eng = engine(checked)
    with Cipher("aes-cbc", K128, device=checked) as c:
        sid = c._session(True)
        eng.destroy_session(sid)  # pull the session from under the Cipher
        with pytest.raises(DeviceError, match="INVSESS"):
            c.encrypt(IV, PT)
        c._sessions.clear()
    eng.transport.check_status()
    # a key the device refuses: ERR on session creation, nothing left behind
    with pytest.raises(DeviceError, match="ERR"):
        eng.create_session(lookup("aes-cbc"), bytes(64), True)  # AES takes no 64-byte key
    with Cipher("aes-cbc", K128, device=checked) as c:
        assert c.encrypt(IV, PT) == NIST_CT["F.2.1"]


def test_model_options_and_refusals() -> None:
    with warpdrive.open("emu:crypto", model_options={"algorithms": "aes-cbc",
                                                     "dataqueues": "3"}) as d:
        assert algorithms(d) == ["aes-cbc"]
        eng = engine(d)
        assert eng.config.max_dataqueues == 3 and eng.ctrl_index == 3
        with Cipher("aes-cbc", K256, device=d) as c:
            assert c.encrypt(IV, PT) == NIST_CT["F.2.5"]
    from warpdrive.errors import WarpdriveError

    with pytest.raises(WarpdriveError, match="bogus"):
        warpdrive.open("emu:crypto", model_options={"bogus": "1"})


# -- the transport's rules, through plain register accesses ------------------------------------
def _caps(d: warpdrive.Device) -> dict[int, tuple[int, int, int, int]]:
    """cfg_type -> (config offset, bar, offset, length) of each virtio vendor capability."""
    out = {}
    for cap_id, pos in d.capabilities():
        if cap_id == VL.PCI_CAP_ID_VENDOR:
            out[d.config_read8(pos + 3)] = (pos, d.config_read8(pos + 4),
                                            d.config_read32(pos + 8), d.config_read32(pos + 12))
    return out


def test_transport_registers_follow_the_spec() -> None:
    with warpdrive.open("emu:crypto") as d:
        caps = _caps(d)
        assert set(caps) == {VL.CAP_COMMON, VL.CAP_NOTIFY, VL.CAP_ISR, VL.CAP_DEVICE,
                             VL.CAP_PCI_CFG}
        assert d.config_read32(caps[VL.CAP_NOTIFY][0] + 16) == 4  # notify_off_multiplier
        _, bar, common, length = caps[VL.CAP_COMMON]
        assert length >= 56
        m = d.map_bar(bar)
        status, dfsel, df, gfsel, gf = common + 20, common, common + 4, common + 8, common + 12
        m.write8(status, 0)
        assert m.read8(status) == 0  # a reset is over when 0 reads back (at once here)
        m.write32(dfsel, 1)
        hi = m.read32(df)
        assert hi & 0b11 == 0b11  # VERSION_1 and ACCESS_PLATFORM
        assert not hi & 0b100  # no packed ring
        m.write32(dfsel, 2)
        assert m.read32(df) == 0
        m.write8(status, VL.STATUS_ACKNOWLEDGE | VL.STATUS_DRIVER)
        m.write32(gfsel, 1)
        m.write32(gf, 1)  # VERSION_1 without ACCESS_PLATFORM: refused
        m.write8(status, VL.STATUS_ACKNOWLEDGE | VL.STATUS_DRIVER | VL.STATUS_FEATURES_OK)
        assert not m.read8(status) & VL.STATUS_FEATURES_OK
        m.write8(status, 0)
        m.write8(status, VL.STATUS_ACKNOWLEDGE | VL.STATUS_DRIVER)
        m.write32(gfsel, 1)
        m.write32(gf, 3)
        m.write8(status, VL.STATUS_ACKNOWLEDGE | VL.STATUS_DRIVER | VL.STATUS_FEATURES_OK)
        assert m.read8(status) & VL.STATUS_FEATURES_OK
        assert m.read16(common + 18) == 2  # num_queues: one data queue + the control queue
        m.write16(common + 22, 0)  # queue_select
        assert m.read16(common + 24) == 256 and m.read16(common + 30) == 0
        m.write16(common + 26, 2)  # queue_msix_vector: 3 vectors exist
        assert m.read16(common + 26) == 2
        m.write16(common + 26, 3)
        assert m.read16(common + 26) == VL.NO_VECTOR
        m.write16(common + 22, 5)  # a queue that does not exist
        assert m.read16(common + 24) == 0
        # the PCI_CFG capability: the same registers through config space
        pos = caps[VL.CAP_PCI_CFG][0]
        d.config_write8(pos + 4, bar)
        d.config_write32(pos + 8, common + 18)
        d.config_write32(pos + 12, 2)
        assert d.config_read16(pos + 16) == 2
        m.write8(status, 0)
        m.write16(common + 22, 0)
        assert m.read16(common + 26) == VL.NO_VECTOR and m.read16(common + 28) == 0


def test_a_ring_rule_break_needs_a_reset_and_a_reset_recovers() -> None:
    d = warpdrive.open("emu:crypto")
    eng = engine(d)
    c = Cipher("aes-cbc", K128, device=d)
    assert c.encrypt(IV, PT) == NIST_CT["F.2.1"]
    q = eng.dataq
    assert q is not None
    q.desc[eng._heads[0]].flags |= VL.DESC_F_INDIRECT  # not negotiated: a driver bug
    with pytest.raises(DeviceError, match="NEEDS_RESET"):
        c.encrypt(IV, PT)
    with pytest.raises(DeviceError, match="NEEDS_RESET"):
        d.close()  # closing says what happened; the device is reset and closed anyway
    assert d.closed
    with warpdrive.open("emu:crypto") as d, Cipher("aes-cbc", K128, device=d) as c:
        assert c.encrypt(IV, PT) == NIST_CT["F.2.1"]


def test_missing_cryptography_names_the_extra(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    code = ("import sys; sys.modules['cryptography'] = None\n"
            "from warpdrive.emu.serve import main\n"
            f"sys.exit(main(['crypto', '--socket', {str(tmp_path / 's')!r}]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "warpdrive[emu-crypto]" in p.stderr and "cryptography" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1  # one line, no traceback
