"""The server's defences against broken models: exceptions in model hooks become error replies
(or log lines) and never stop the server; impossible device descriptions are refused at start.
The server runs in a thread of the test process (its real socket, real fds, real client); the
models are purpose-built to misbehave."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from warpdrive.backends.vfiouser.client import VfioUserDevice, open_vfio_user
from warpdrive.emu.model import (
    VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX,
    DeviceModel,
    RegionSpec,
)
from warpdrive.emu.server import VfioUserServer
from warpdrive.errors import (
    ConnectionLostError,
    InvalidArgumentError,
    KernelError,
    PermissionDeniedError,
)


class Buggy(DeviceModel):
    name = "buggy"
    vendor_id = 0x1234
    device_id = 0xBAD0

    def regions(self) -> list[RegionSpec]:
        return [RegionSpec(0, 0x2000, mmap_areas=((0x1000, 0x1000),))]

    def setup(self) -> None:
        self.word = self.region_u64(0, 0x1000)
        self.polls_with_bell = 0

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if offset == 0:
            raise RuntimeError("model bug")
        if offset == 4:
            raise OSError(errno.EACCES, "register locked")
        if offset == 8:
            return b"\0"  # wrong length
        return bytes(size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if offset == 0:
            raise ValueError("bad write")

    def poll(self) -> bool:
        if self.word.value == 1:
            self.polls_with_bell += 1
            if self.polls_with_bell <= 3:  # few enough that the server logs the fault below too
                raise RuntimeError("poll bug")
            return False
        if self.word.value == 2:
            self.dma.read(0xDEAD000, 4)  # an unhandled DMA fault
        return False


class Quiet(DeviceModel):
    """No mmap areas: the server is not polled and blocks until a message arrives."""

    name = "quiet"
    vendor_id = 0x1234
    device_id = 0xBAD1

    def regions(self) -> list[RegionSpec]:
        return [RegionSpec(0, 0x1000)]

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        return bytes(size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        pass


def serve(model: DeviceModel, path: str) -> tuple[VfioUserServer, threading.Thread]:
    server = VfioUserServer(model, path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return server, thread


@contextlib.contextmanager
def served_in_process(model: DeviceModel, path: str) -> Iterator[VfioUserServer]:
    """`serve`, then the server stopped and its thread ended when the block leaves."""
    server, thread = serve(model, path)
    try:
        yield server
    finally:
        server.stop()
        thread.join(5)
    assert not thread.is_alive()


@pytest.fixture
def buggy(tmp_path: Path) -> Iterator[tuple[VfioUserDevice, Buggy]]:
    model = Buggy()
    server, thread = serve(model, str(tmp_path / "buggy.sock"))
    dev = open_vfio_user(str(tmp_path / "buggy.sock"))
    yield dev, model
    dev.close()
    server.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_model_exceptions_become_error_replies(buggy, caplog) -> None:
    dev, _ = buggy
    with pytest.raises(KernelError) as ei:
        dev.region_read(0, 0, 4)
    assert ei.value.errno == errno.EIO
    with pytest.raises(PermissionDeniedError) as ei2:
        dev.region_read(0, 4, 4)
    assert ei2.value.errno == errno.EACCES
    with pytest.raises(KernelError, match="Input/output error"):
        dev.region_read(0, 8, 4)  # a model returning the wrong number of bytes
    with pytest.raises(KernelError):
        dev.region_write(0, 0, b"\0\0\0\0")  # mapped device: trapped writes wait for the reply
    assert dev.region_read(0, 16, 4) == b"\0" * 4  # still serving
    err = caplog.text
    assert "RuntimeError: model bug" in err and "ValueError: bad write" in err


def test_poll_exceptions_are_logged_not_fatal(buggy, caplog) -> None:
    dev, model = buggy
    bar = dev.map_bar(0)
    bar.write64(0x1000, 1)  # the model's poll() now raises
    deadline = time.monotonic() + 5
    while model.polls_with_bell < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    bar.write64(0x1000, 2)  # ... and now hits an unmapped IOVA without handling the fault
    time.sleep(0.1)
    bar.write64(0x1000, 0)
    assert dev.region_read(0, 16, 4) == b"\0" * 4
    err = caplog.text
    assert "poll() raised" in err and "RuntimeError: poll bug" in err
    assert "unhandled DMA fault in poll()" in err and "0xdead000" in err


def test_stop_from_another_thread_while_a_client_is_connected(tmp_path: Path) -> None:
    path = str(tmp_path / "quiet.sock")
    server, thread = serve(Quiet(), path)
    dev = open_vfio_user(path)
    assert dev.region_read(0, 0, 4) == b"\0" * 4
    server.stop()  # the server is blocked in select() with no timeout: the wake pipe ends it
    thread.join(5)
    assert not thread.is_alive() and not os.path.exists(path)
    with pytest.raises(ConnectionLostError):
        dev.region_read(0, 0, 4)
    dev.close()


class _Spec(DeviceModel):
    name = "spec"
    areas: tuple[tuple[int, int], ...] = ()
    msix: bool = False
    msix_count = 2
    msi = 0  # vectors the MSI capability offers (0: none)
    msi_count = 0  # what irq_counts() says
    index = 0

    def regions(self) -> list[RegionSpec]:
        return [RegionSpec(self.index, 0x4000, mmap_areas=self.areas)]

    def irq_counts(self) -> dict[int, int]:
        counts = {VFIO_PCI_MSIX_IRQ_INDEX: self.msix_count} if self.msix else {}
        if self.msi_count:
            counts[VFIO_PCI_MSI_IRQ_INDEX] = self.msi_count
        return counts

    def build_config_space(self) -> bytearray:
        cfg = self.config_builder()
        if self.msi:
            cfg.add_msi(self.msi)
        if self.msix:
            cfg.add_msix(2, table_bar=0, table_offset=0x1000, pba_bar=0, pba_offset=0x1800)
        return cfg.build()

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        return bytes(size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        pass


@pytest.mark.parametrize(("attrs", "message"), [
    ({"areas": ((0x800, 0x1000),)}, "not page-aligned"),
    ({"areas": ((0x3000, 0x2000),)}, "not page-aligned inside the region"),
    ({"index": 7}, "clashes with config space"),
    ({"msix": True, "areas": ((0x1000, 0x1000),)}, "overlapping mmap areas / MSI-X"),
    ({"msix": True, "msix_count": 3}, "MSI-X capability has 2 vectors"),
    # A driver wanting 3 MSI vectors enables 4 (a power of two) and QEMU asks for all 4.
    ({"msi": 4, "msi_count": 3}, "MSI capability offers 4 vectors but irq_counts"),
    ({"msi": 2}, "MSI capability offers 2 vectors but irq_counts"),
])
def test_impossible_devices_are_refused(tmp_path: Path, attrs: dict, message: str) -> None:
    model = type("Bad", (_Spec,), attrs)()
    with pytest.raises(InvalidArgumentError, match=message) as info:
        VfioUserServer(model, str(tmp_path / "x.sock"))
    assert info.value.what.startswith("model ") and "build_config_space" in (info.value.hint or "")
