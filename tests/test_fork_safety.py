"""Fork safety on real fork(2): DMA pages are absent in the child, the parent's pages never move,
runtime objects are dead in the child, fds are close-on-exec and closed in the child.

The page-frame checks read /proc/self/pagemap (PFNs need CAP_SYS_ADMIN; the suite runs as root)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct

import pytest
from forkchild import run_in_child

from warpdrive import syscalls as sc
from warpdrive.errors import ForkedContextError
from warpdrive.memory import DmaBuffer
from warpdrive.memory.smaps import mappings_in_range, read_smaps
from warpdrive.mmio import Mmio, MmioWindow

PAGE = sc.PAGE_SIZE


def pfns(addr: int, npages: int) -> list[int]:
    with open("/proc/self/pagemap", "rb") as f:
        f.seek((addr // PAGE) * 8)
        raw = f.read(8 * npages)
    out = []
    for (entry,) in struct.iter_unpack("<Q", raw):
        assert entry >> 63, "page not present"
        out.append(entry & ((1 << 55) - 1))
    return out


def test_child_does_not_have_the_dma_pages() -> None:
    buf = DmaBuffer.allocate(2 * PAGE)
    buf.write(0, b"parent-secret")

    def child() -> int:
        covered, _hole = mappings_in_range(read_smaps(), buf.addr, buf.size)
        # Only the inaccessible placeholder the fork guard parks there may remain.
        if any(m.readable or m.writable for m in covered):
            return 1
        try:
            _ = buf.view
        except ForkedContextError as e:
            if "belongs to process" not in str(e):
                return 2
            return 0
        return 3

    assert run_in_child(child) == 0
    assert buf.read(0, 13) == b"parent-secret"
    buf.close()


def test_child_touching_the_raw_address_faults_instead_of_reading_parent_data() -> None:
    buf = DmaBuffer.allocate(PAGE)
    buf.write(0, b"X" * 64)

    def child() -> int:
        import faulthandler

        faulthandler.disable()  # the crash is the expected outcome; keep the log quiet
        ctypes.string_at(buf.addr, 1)  # must SIGSEGV: nothing readable is mapped here
        return 0

    assert run_in_child(child) == -signal.SIGSEGV
    buf.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="reading PFNs from pagemap needs root")
def test_parent_dma_pages_stay_put_when_parent_and_child_write_after_fork() -> None:
    """The COW hazard: without MADV_DONTFORK, a parent write while a child shares the page moves
    the parent to a new copy and the device keeps writing the old one. DmaBuffers never move."""
    buf = DmaBuffer.allocate(2 * PAGE)
    buf.write(0, b"A" * (2 * PAGE))
    before = pfns(buf.addr, 2)
    # Ordinary memory next to it: the child writes its page 0 ("nearby memory"); page 1 stays
    # shared with the child and serves as the control.
    plain = sc.mmap(2 * PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    ctypes.memset(plain, 0x11, 2 * PAGE)
    plain_before = pfns(plain, 2)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ctypes.memset(plain, 0x22, PAGE)
        os.write(ready_w, b"1")
        os.read(done_r, 1)  # stay alive (sharing plain page 1) until the parent has checked
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        buf.write(0, b"B" * PAGE)  # parent writes its DMA buffer after the fork
        ctypes.memset(plain + PAGE, 0x33, PAGE)  # ...and the shared ordinary page
        after = pfns(buf.addr, 2)
        plain_after = pfns(plain, 2)
    finally:
        os.write(done_w, b"1")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    assert after == before, "DMA buffer pages moved: the device would miss the parent's writes"
    assert buf.read(0, 1) == b"B" and buf.read(PAGE, 1) == b"A"
    assert ctypes.string_at(plain, 1) == b"\x11", "the child's write leaked into the parent"
    # Control: the shared ordinary page was copied on the parent's write (COW broke) — what
    # silently detaches a device from a buffer that lacks MADV_DONTFORK.
    assert plain_after[1] != plain_before[1]
    sc.munmap(plain, 2 * PAGE)
    buf.close()


def test_runtime_objects_are_dead_in_the_child() -> None:
    buf = DmaBuffer.allocate(PAGE)
    # A register window over ordinary memory stands in for a BAR here; the lab test does the
    # same with a real VFIO BAR.
    mmio = Mmio("test/bar0", PAGE, [MmioWindow(0, PAGE, buf.addr)])
    bell = mmio.doorbell(0x40, 64)
    mmio.write32(0, 0x1234)

    def child() -> int:
        for action in (lambda: bell.ring(1), lambda: mmio.read32(0), lambda: buf.read(0, 4)):
            try:
                action()
            except ForkedContextError:
                continue
            return 1
        return 0

    assert run_in_child(child) == 0
    assert mmio.read32(0) == 0x1234
    bell.ring(7)
    assert mmio.read64(0x40) == 7
    mmio.close()
    buf.close()


def test_fds_are_cloexec_and_closed_in_the_child() -> None:
    buf = DmaBuffer.allocate(PAGE, "memfd")
    efd = sc.eventfd()
    assert fcntl.fcntl(buf.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert fcntl.fcntl(efd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    fd = buf.fd

    def child() -> int:
        try:
            os.fstat(fd)
        except OSError:
            return 0
        return 1

    assert run_in_child(child) == 0
    os.fstat(fd)  # still open in the parent
    os.close(efd)
    buf.close()
