"""The virtio-pci transport and split virtqueues on a real device: QEMU's virtio-crypto-pci
(iommu_platform=on, disable-legacy=on) on vfio-pci in the lab guest, in both IOMMU modes."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

import warpdrive
from warpdrive import binding
from warpdrive.devices.virtio.pci import VirtioPciTransport
from warpdrive.devices.virtio.virtqueue import SplitVirtqueue
from warpdrive.errors import InvalidArgumentError
from warpdrive.uapi import virtio as U

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def bound_crypto(crypto_bdf: str) -> Iterator[str]:
    with binding.bound_to(crypto_bdf):
        yield crypto_bdf


@pytest.fixture
def transport(bound_crypto: str, iommu_mode: str) -> Iterator[VirtioPciTransport]:
    with warpdrive.open(bound_crypto, backend=iommu_mode) as dev:
        t = VirtioPciTransport(dev, expect_device_id=U.VIRTIO_ID_CRYPTO)
        dev.enable_bus_master()
        yield t
        t.reset()


def start(t: VirtioPciTransport) -> None:
    t.reset()
    assert t.status == 0
    t.add_status(U.VIRTIO_CONFIG_S_ACKNOWLEDGE)
    t.add_status(U.VIRTIO_CONFIG_S_DRIVER)
    t.negotiate()


def test_capabilities_and_mapping(transport: VirtioPciTransport) -> None:
    t = transport
    types = {c.cfg_type for c in t.caps}
    assert {U.VIRTIO_PCI_CAP_COMMON_CFG, U.VIRTIO_PCI_CAP_NOTIFY_CFG, U.VIRTIO_PCI_CAP_ISR_CFG,
            U.VIRTIO_PCI_CAP_DEVICE_CFG} <= types
    assert t.notify_cap.notify_off_multiplier == 4  # QEMU without page-per-vq
    assert t.common.mmio.is_mapped(t.common.base, 4)  # registers are loads/stores, not syscalls
    assert t.virtio_id == U.VIRTIO_ID_CRYPTO
    with pytest.raises(InvalidArgumentError, match="outside the virtio common window"):
        t.common.read32(t.common.length)


def test_feature_negotiation_and_status(transport: VirtioPciTransport) -> None:
    t = transport
    offered = t.device_features()
    assert offered >> U.VIRTIO_F_VERSION_1 & 1
    assert offered >> U.VIRTIO_F_ACCESS_PLATFORM & 1  # iommu_platform=on
    start(t)
    assert t.features == (1 << U.VIRTIO_F_VERSION_1) | (1 << U.VIRTIO_F_ACCESS_PLATFORM)
    assert t.status == (U.VIRTIO_CONFIG_S_ACKNOWLEDGE | U.VIRTIO_CONFIG_S_DRIVER
                        | U.VIRTIO_CONFIG_S_FEATURES_OK)
    # the device config, read under config_generation
    max_dq = t.read_device_config(
        lambda w: w.read32(U.virtio_crypto_config.max_dataqueues.offset))
    assert max_dq == 1 and t.num_queues == 2
    assert t.queue_max_size(0) == 1024 and t.queue_max_size(1) == 1024
    t.reset()
    assert t.status == 0


def create_session_request() -> bytes:
    req = U.virtio_crypto_op_ctrl_req()
    req.header.opcode = U.VIRTIO_CRYPTO_CIPHER_CREATE_SESSION
    req.u.sym_create_session.op_type = U.VIRTIO_CRYPTO_SYM_OP_CIPHER
    para = req.u.sym_create_session.u.cipher.para
    para.algo = U.VIRTIO_CRYPTO_CIPHER_AES_CBC
    para.keylen = 16
    para.op = U.VIRTIO_CRYPTO_OP_ENCRYPT
    return bytes(req) + bytes(range(16))


def destroy_session_request(sid: int) -> bytes:
    req = U.virtio_crypto_op_ctrl_req()
    req.header.opcode = U.VIRTIO_CRYPTO_CIPHER_DESTROY_SESSION
    req.u.destroy_session.session_id = sid
    return bytes(req)


@pytest.mark.parametrize("use_msix", [False, True], ids=["polled", "msix"])
def test_control_queue_round_trip(transport: VirtioPciTransport, use_msix: bool) -> None:
    """A generic virtqueue (free-list descriptors) carries a session create and destroy; with
    MSI-X the completion arrives as an eventfd interrupt, polled otherwise."""
    t = transport
    dev = t.device
    start(t)
    irq = None
    if use_msix:
        irqs = t.enable_msix(2)
        t.set_config_vector(0)
        irq = irqs[1]
    q = SplitVirtqueue(t, 1, 16, interrupt=irq)
    assert q.notify.mapped  # one store per kick, no syscall
    t.driver_ok()
    buf = dev.dma.alloc(4096)
    assert buf.iova is not None
    req = create_session_request()
    buf.write(0, req)
    q.add([(buf.iova, len(req), False), (buf.iova + 512, 16, True)], "create")
    assert q.num_free == 14
    assert q.kick() == 1
    if irq is not None:
        assert irq.wait(5.0) >= 1
    else:
        for _ in range(1_000_000):
            if q.has_used():
                break
    done = q.poll()
    assert [tok for tok, _ in done] == ["create"] and done[0][1] == 16
    out = U.virtio_crypto_session_input.from_buffer_copy(buf.read(512, 16))
    assert out.status == U.VIRTIO_CRYPTO_OK
    assert q.num_free == 16 and q.in_flight == 0
    req = destroy_session_request(out.session_id)
    buf.write(0, req)
    buf.write(512, b"\xff")
    q.add([(buf.iova, len(req), False), (buf.iova + 512, 1, True)], "destroy")
    q.kick()
    if irq is not None:
        assert irq.wait(5.0) >= 1
    for _ in range(1_000_000):
        if q.has_used():
            break
    assert [tok for tok, _ in q.poll()] == ["destroy"]
    assert buf.read(512, 1)[0] == U.VIRTIO_CRYPTO_OK
    t.check_status()
    t.reset()  # the device stops using the ring before it is freed
    q.close()


def test_ring_lives_in_dma_memory_held_by_the_queue(transport: VirtioPciTransport) -> None:
    t = transport
    start(t)
    q = SplitVirtqueue(t, 0, 64)
    m = t.device.dma.find(q.buffer.addr)
    assert m is not None and m.users  # unmapping it is refused while the queue lives
    assert ctypes.addressof(q.desc) == q.buffer.addr
    t.reset()
    q.close()
    assert t.device.dma.find(q.buffer.addr) is None
    with pytest.raises(InvalidArgumentError, match="power of two"):
        SplitVirtqueue(t, 0, 48)
