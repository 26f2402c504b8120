"""The broker's SQE check, field by field, against a real device's DMA space (the bundled test
model over vfio-user): what may reach the device, and what becomes an error status instead.
Client maps are real sealed memfds mapped for the device (`ClientMaps`)."""

from __future__ import annotations

import fcntl
import os
import random
import struct
from collections.abc import Iterator

import pytest

from tests.brokerutil import sqe_words
from warpdrive.backends.vfiouser.launcher import open_emulated
from warpdrive.devices.zip import hw
from warpdrive.serve.maps import ClientMaps, TranslationFault
from warpdrive.serve.sqe import CTX_SPAN, Refused, mediate, restore

PAGE = 4096
SQE = struct.Struct("<32I")


def memfd(size: int) -> int:
    fd = os.memfd_create("client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


@pytest.fixture(scope="module")
def device() -> Iterator[object]:
    dev = open_emulated("testdev")
    yield dev
    dev.close()


@pytest.fixture
def maps(device) -> Iterator[ClientMaps]:
    m = ClientMaps(device.dma, "client A")  # type: ignore[attr-defined]
    fds = [memfd(0x20000), memfd(PAGE)]
    m.add(0x100000, 0x10000, fds[0], 0, True, True)  # buffers
    m.add(0x200000, 0x10000, fds[0], 0x10000, True, True)  # a stream context area
    m.add(0x300000, PAGE, fds[1], 0, True, False)  # read-only
    for fd in fds:
        os.close(fd)
    yield m
    m.clear()
    assert m.parked == 0


def sqe(**dw: int) -> bytearray:
    return bytearray(SQE.pack(*sqe_words(0x100000, 0x102000, dw26=0xABCD, **dw)))


def test_a_good_sqe_is_translated_and_cleaned(maps: ClientMaps) -> None:
    client = sqe(dw0=7, dw24=0xDEAD, dw25=0xBEEF, dw5=1)
    ring = bytearray(256)
    addrs, used = mediate(memoryview(client), 0, memoryview(ring), 128, maps)
    w = SQE.unpack_from(ring, 128)
    m = maps.translate(0x100000, 1, write=False)
    assert w[hw.DW_SRC_H] << 32 | w[hw.DW_SRC_L] == m.dev_iova
    assert w[hw.DW_DST_H] << 32 | w[hw.DW_DST_L] == m.dev_iova + 0x2000
    assert w[0] == 0 and w[24] == w[25] == w[5] == 0  # results and unused words cleared
    assert w[hw.DW_TAG_V3] == 0xABCD  # the client's tag passes
    assert used == (m, m)
    restore(memoryview(ring), 128, addrs)
    assert SQE.unpack_from(ring, 128)[hw.DW_SRC_L] == 0x100000


def test_a_stateful_sqe_needs_its_whole_context_mapped(maps: ClientMaps) -> None:
    dw7 = hw.sqe_dw7(finish=False, stateful=True, new_stream=True, sqe_type=hw.SQE_TYPE_V3)
    ok = sqe(dw7=dw7, dw22=0x200000 + hw.HW_CTX_RSV_OFFSET - 64)
    _, used = mediate(memoryview(ok), 0, memoryview(bytearray(128)), 0, maps)
    assert len(used) == 3
    too_far = sqe(dw7=dw7, dw22=0x200000 + 0x10000 - CTX_SPAN + 64)
    with pytest.raises(Refused) as ei:
        mediate(memoryview(too_far), 0, memoryview(bytearray(128)), 0, maps)
    assert ei.value.status == hw.STATUS_DMA_FAULT


@pytest.mark.parametrize(("fields", "status"), [
    ({"dw18": 0x400000}, hw.STATUS_DMA_FAULT),  # source not mapped at all
    ({"dw18": 0x10F800}, hw.STATUS_DMA_FAULT),  # source runs off the end of its map
    ({"dw20": 0x300000}, hw.STATUS_DMA_FAULT),  # destination mapped read-only
    ({"dw19": 1}, hw.STATUS_DMA_FAULT),  # a high address word
    ({"dw14": 0x10000}, hw.STATUS_DMA_FAULT),  # destination length runs off the map
    ({"dw9": hw.sqe_dw9(hw.ALG_ZLIB, buf_type=hw.SQE_BUF_SGL)}, hw.STATUS_BAD_REQUEST),  # SGL
    ({"dw9": 0x07}, hw.STATUS_BAD_REQUEST),  # request type not on the whitelist
    ({"dw9": hw.ALG_ZLIB | 9 << hw.SQE_WINDOW_SHIFT}, hw.STATUS_BAD_REQUEST),  # window
    ({"dw7": 0x5 << hw.SQE_TYPE_SHIFT}, hw.STATUS_BAD_REQUEST),  # SQE type
    ({"dw7": hw.SQE_TYPE_V3 << hw.SQE_TYPE_SHIFT | 0x40}, hw.STATUS_BAD_REQUEST),  # SGE offset
    ({"dw8": 0x10}, hw.STATUS_BAD_REQUEST),  # out SGE offset
    ({"dw4": hw.HZ_MAX_SIZE + 1}, hw.STATUS_BAD_REQUEST),  # too long
])
def test_what_never_reaches_the_device(maps: ClientMaps, fields: dict[str, int],
                                       status: int) -> None:
    ring = sqe(**fields)
    out = bytearray(128)
    with pytest.raises(Refused) as ei:
        mediate(memoryview(ring), 0, memoryview(out), 0, maps)
    assert out == bytearray(128)  # nothing reached the hardware ring
    assert ei.value.status == status, ei.value.reason


def test_translation_is_per_client(device, maps: ClientMaps) -> None:
    other = ClientMaps(device.dma, "client B")
    fd = memfd(PAGE)
    other.add(0x100000, PAGE, fd, 0, True, True)  # B uses the same client IOVA as A
    os.close(fd)
    b = other.translate(0x100000, PAGE, write=True)
    a = maps.translate(0x100000, PAGE, write=True)
    assert a.dev_iova != b.dev_iova
    with pytest.raises(TranslationFault):  # B's device IOVA means nothing in A's space
        maps.translate(b.dev_iova, 16, write=True)
    other.clear()


def test_random_sqes_never_escape(maps: ClientMaps) -> None:
    """A bounded seeded fuzz: whatever the 32 dwords hold, an SQE either is refused or names
    only device addresses inside this client's maps."""
    rng = random.Random(1212)
    windows = [(m.dev_iova, m.dev_iova + (m.end - m.iova)) for m in
               (maps.translate(a, 1, write=False) for a in (0x100000, 0x200000, 0x300000))]
    passed = 0
    for i in range(5000):
        w = [rng.getrandbits(32) for _ in range(32)]
        if i % 2:  # half of them near-valid, so the checks past the first are exercised too
            base = list(SQE.unpack(sqe()))
            for k in rng.sample(range(32), rng.randint(1, 4)):
                base[k] = rng.choice([rng.getrandbits(32), rng.getrandbits(16), 0,
                                      0x100000 + rng.getrandbits(17), 0x200000, 0x300000])
            w = base
        ring = bytearray(SQE.pack(*w))
        hw_ring = bytearray(128)
        try:
            mediate(memoryview(ring), 0, memoryview(hw_ring), 0, maps)
        except Refused:
            continue
        passed += 1
        out = SQE.unpack(hw_ring)
        for lo, n in ((hw.DW_SRC_L, out[hw.DW_INPUT_LENGTH]),
                      (hw.DW_DST_L, out[hw.DW_DEST_AVAIL_OUT])):
            a = out[lo + 1] << 32 | out[lo]
            assert any(s <= a and a + max(n, 1) <= e for s, e in windows)
    assert passed > 100
