"""check_dma_memory and DmaBuffer on real mappings made in this process (no fakes: the kernel's own
/proc/self/smaps describes each one)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from warpdrive import syscalls as sc
from warpdrive.errors import InvalidArgumentError, UnsafeMemoryError
from warpdrive.memory import DmaBuffer, MemoryKind, check_dma_memory, inspect_dma_memory
from warpdrive.memory.buffer import HUGE_1G, HUGE_2M, free_hugepages, hugepage_sizes

PAGE = sc.PAGE_SIZE


def _addr(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


@pytest.fixture
def anon_pages():
    addr = sc.mmap(4 * PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    yield addr
    sc.munmap(addr, 4 * PAGE)


def test_anonymous_memory_is_accepted(anon_pages: int) -> None:
    assert check_dma_memory(anon_pages, 4 * PAGE) is MemoryKind.ANONYMOUS


def test_python_heap_bytes_are_anonymous() -> None:
    buf = ctypes.create_string_buffer(1 << 20)
    addr = ctypes.addressof(buf)
    assert check_dma_memory(addr, 4096) is MemoryKind.ANONYMOUS


def test_regular_file_mapping_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"\0" * (2 * PAGE))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 2 * PAGE) as m:
        addr = _addr(m)
        with pytest.raises(UnsafeMemoryError) as ei:
            check_dma_memory(addr, 2 * PAGE)
        msg = str(ei.value)
        assert "regular file" in msg and str(path) in msg and "writeback" in msg
        assert "memfd" in msg  # says what to do instead
        del addr


def test_private_file_mapping_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "private.bin"
    path.write_bytes(b"x" * PAGE)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), PAGE, flags=mmap.MAP_PRIVATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            with pytest.raises(UnsafeMemoryError, match="regular file"):
                check_dma_memory(_addr(m), PAGE, writable=False)
        finally:
            import gc

            gc.collect()
            m.close()


def test_read_only_memory_is_refused_when_the_device_may_write(anon_pages: int) -> None:
    sc.mprotect(anon_pages, PAGE, sc.PROT_READ)
    with pytest.raises(UnsafeMemoryError, match="read-only but the device may write"):
        check_dma_memory(anon_pages, PAGE, writable=True)
    # ...but a device that only reads may use it.
    assert check_dma_memory(anon_pages, PAGE, writable=False) is MemoryKind.ANONYMOUS


def test_inaccessible_memory_is_refused(anon_pages: int) -> None:
    sc.mprotect(anon_pages + PAGE, PAGE, sc.PROT_NONE)
    with pytest.raises(UnsafeMemoryError, match="PROT_NONE"):
        check_dma_memory(anon_pages, 2 * PAGE, writable=False)


def test_range_with_a_hole_is_refused_naming_the_hole(anon_pages: int) -> None:
    sc.munmap(anon_pages + PAGE, PAGE)
    try:
        with pytest.raises(UnsafeMemoryError) as ei:
            check_dma_memory(anon_pages, 3 * PAGE)
        assert f"{anon_pages + PAGE:#x}" in str(ei.value)
        assert "not fully mapped" in str(ei.value)
    finally:
        # put a page back so the fixture's munmap covers a sane range
        sc.mmap(PAGE, sc.PROT_READ, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED,
                addr=anon_pages + PAGE)


def test_unmapped_range_is_refused() -> None:
    addr = sc.mmap(PAGE, sc.PROT_READ, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    sc.munmap(addr, PAGE)
    with pytest.raises(UnsafeMemoryError, match="not fully mapped"):
        check_dma_memory(addr, PAGE)


def test_pfnmap_io_mapping_is_refused_as_mmio() -> None:
    """[vvar] is a VM_IO|VM_PFNMAP mapping the kernel gives every process: the same VmFlags a
    mapped BAR carries (the lab repeats this on a real VFIO BAR)."""
    with open("/proc/self/smaps") as f:
        text = f.read()
    line = next(ln for ln in text.splitlines() if ln.endswith("[vvar]"))
    start = int(line.split("-")[0], 16)
    with pytest.raises(UnsafeMemoryError, match="MMIO"):
        check_dma_memory(start, PAGE, writable=False)


def test_vdso_is_refused_as_special_mapping() -> None:
    with open("/proc/self/maps") as f:
        line = next(ln for ln in f if ln.rstrip().endswith("[vdso]"))
    start = int(line.split("-")[0], 16)
    with pytest.raises(UnsafeMemoryError, match="special mapping"):
        check_dma_memory(start, PAGE, writable=False)


def test_memfd_is_accepted() -> None:
    fd = os.memfd_create("t", os.MFD_CLOEXEC)
    os.ftruncate(fd, 2 * PAGE)
    try:
        addr = sc.mmap(2 * PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_SHARED, fd)
        try:
            assert check_dma_memory(addr, 2 * PAGE) is MemoryKind.MEMFD
        finally:
            sc.munmap(addr, 2 * PAGE)
    finally:
        os.close(fd)


def test_tmpfs_file_and_shared_anonymous_are_shmem() -> None:
    addr = sc.mmap(PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_SHARED | sc.MAP_ANONYMOUS)
    try:
        assert check_dma_memory(addr, PAGE) is MemoryKind.SHMEM
    finally:
        sc.munmap(addr, PAGE)
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    path = f"/dev/shm/warpdrive-test-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, PAGE)
        addr = sc.mmap(PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_SHARED, fd)
        try:
            assert check_dma_memory(addr, PAGE) is MemoryKind.SHMEM
        finally:
            sc.munmap(addr, PAGE)
    finally:
        os.close(fd)
        os.unlink(path)


def test_mixed_kinds_across_a_range_are_reported_as_mixed() -> None:
    fd = os.memfd_create("mixed", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    base = sc.mmap(2 * PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    try:
        sc.mmap(PAGE, sc.PROT_READ | sc.PROT_WRITE, sc.MAP_SHARED | sc.MAP_FIXED, fd,
                addr=base + PAGE)
        assert check_dma_memory(base, 2 * PAGE) is MemoryKind.MIXED
    finally:
        sc.munmap(base, 2 * PAGE)
        os.close(fd)


def test_bad_arguments_are_rejected_before_reading_smaps() -> None:
    with pytest.raises(InvalidArgumentError):
        check_dma_memory(0x1000, 0)
    with pytest.raises(InvalidArgumentError):
        check_dma_memory(0, 4096)


# -- DmaBuffer ------------------------------------------------------------------------------

def test_anonymous_buffer_is_prefaulted_dontfork_and_writable() -> None:
    with DmaBuffer.allocate(10_000) as buf:
        assert buf.size == 3 * PAGE and buf.addr % PAGE == 0
        info = inspect_dma_memory(buf.addr, buf.size)
        assert info.kind is MemoryKind.ANONYMOUS
        assert info.dontfork, "MADV_DONTFORK must show as 'dc' in VmFlags"
        assert all(m.fields.get("Rss", 0) * 1024 == m.end - m.start for m in info.mappings)
        buf.write(100, b"hello")
        assert buf.read(100, 5) == b"hello"
        assert bytes(buf.view[100:105]) == b"hello"


def test_memfd_buffer_has_a_cloexec_fd() -> None:
    import fcntl

    with DmaBuffer.allocate(PAGE, "memfd") as buf:
        assert buf.kind is MemoryKind.MEMFD and buf.fd >= 0
        assert fcntl.fcntl(buf.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert inspect_dma_memory(buf.addr, buf.size).dontfork


def _rss(buf: DmaBuffer) -> int:
    return sum(m.fields.get("Rss", 0) * 1024
               for m in inspect_dma_memory(buf.addr, buf.size).mappings)


def test_memfd_buffer_is_prefaulted_unless_told_otherwise() -> None:
    """A vfio-user space allocates with prefault=False (the server maps the fd and shares the
    pages): those appear on first touch, by either side, and are the same pages."""
    with DmaBuffer.allocate(64 * PAGE, "memfd") as buf:
        assert _rss(buf) == buf.size
    with DmaBuffer.allocate(64 * PAGE, "memfd", prefault=False) as buf:
        assert _rss(buf) == 0
        other = mmap.mmap(buf.fd, buf.size, flags=mmap.MAP_SHARED)  # as the server maps it
        try:
            other[5 * PAGE:5 * PAGE + 5] = b"hello"
            assert buf.read(5 * PAGE, 5) == b"hello"
            buf.write(9 * PAGE, b"world")
            assert other[9 * PAGE:9 * PAGE + 5] == b"world"
            assert _rss(buf) == 2 * PAGE  # only the pages touched here
        finally:
            other.close()


def test_buffer_bounds_are_checked() -> None:
    with DmaBuffer.allocate(PAGE) as buf:
        with pytest.raises(InvalidArgumentError, match="overruns"):
            buf.write(PAGE - 2, b"abc")
        with pytest.raises(InvalidArgumentError, match="overruns"):
            buf.read(PAGE, 1)


def test_unknown_kind_is_rejected_with_choices() -> None:
    with pytest.raises(InvalidArgumentError, match="anonymous, hugetlb or memfd"):
        DmaBuffer.allocate(PAGE, "gpu")


def _mapped(addr: int) -> str | None:
    """The permissions of the mapping at `addr` in /proc/self/maps, None if unmapped."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.split()[1]
    return None


@pytest.mark.parametrize("kind", ["anonymous", "memfd"])
def test_closing_with_exported_views_unmaps_when_the_last_view_dies(kind: str) -> None:
    """A view made from the buffer outlives its close (a caller's slice of a piece of output):
    the close goes through and the memory stays mapped, readable and writable through the view,
    until that view dies, never unmapped under it; meanwhile a forked child still gets the
    placeholder over the address (the buffer stays registered for fork)."""
    from warpdrive import forkguard

    buf = DmaBuffer.allocate(2 * PAGE, kind)
    buf.write(PAGE, b"kept")
    sub = memoryview(buf.view)[PAGE:PAGE + 8]  # the caller's own slice
    whole = memoryview(buf.view)
    whole.release()  # (a view released before the close keeps nothing)
    buf.close()
    assert buf.closed and buf.fd == -1
    assert bytes(sub[:4]) == b"kept"
    sub[4:8] = b"more"
    assert _mapped(buf.addr) == ("rw-s" if kind == "memfd" else "rw-p")
    assert buf in forkguard._live
    with pytest.raises(Exception, match="closed"):
        buf.read(0, 4)
    sub.release()
    assert _mapped(buf.addr) is None  # the last view gone: unmapped
    assert buf not in forkguard._live
    buf.close()  # (again: nothing to do)


@pytest.fixture
def hugepages_2m():
    """Reserve two 2 MiB huge pages for the test (root only) and restore the pool afterwards."""
    if HUGE_2M not in hugepage_sizes():
        pytest.skip("this kernel has no 2 MiB huge pages")
    nr = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    before = int(nr.read_text())
    if free_hugepages(HUGE_2M) < 2:
        try:
            nr.write_text(str(before + 2))
        except OSError as e:
            pytest.skip(f"cannot reserve huge pages here: {e}")
    if free_hugepages(HUGE_2M) < 2:
        nr.write_text(str(before))
        pytest.skip("the kernel could not reserve 2 MiB huge pages (memory fragmented)")
    yield
    nr.write_text(str(before))


@pytest.mark.usefixtures("hugepages_2m")
def test_hugetlb_buffer_is_accepted_with_its_page_size() -> None:
    with DmaBuffer.allocate(HUGE_2M, "hugetlb") as buf:
        info = inspect_dma_memory(buf.addr, buf.size)
        assert info.kind is MemoryKind.HUGETLB and info.page_size == HUGE_2M
        assert info.dontfork
        buf.write(HUGE_2M - 4, b"tail")
        assert buf.read(HUGE_2M - 4) == b"tail"


@pytest.mark.usefixtures("hugepages_2m")
def test_memfd_hugetlb_buffer_is_hugetlb() -> None:
    with DmaBuffer.allocate(HUGE_2M, "memfd", page_size=HUGE_2M) as buf:
        assert buf.fd >= 0
        assert check_dma_memory(buf.addr, buf.size) is MemoryKind.HUGETLB


def test_hugetlb_without_reserved_pages_says_how_to_reserve() -> None:
    if HUGE_1G not in hugepage_sizes() or free_hugepages(HUGE_1G) > 0:
        pytest.skip("needs a kernel with 1 GiB pages and none reserved")
    with pytest.raises(Exception, match="nr_hugepages") as ei:
        DmaBuffer.allocate(HUGE_1G, "hugetlb", page_size=HUGE_1G)
    assert "1024 MiB" in str(ei.value)


def test_range_read_of_smaps_matches_a_full_parse() -> None:
    from warpdrive.memory.smaps import mappings_in_range, read_smaps, read_smaps_range

    bufs = [DmaBuffer.allocate(64 * 1024) for _ in range(5)]
    try:
        for b in bufs:
            full, _ = mappings_in_range(read_smaps(), b.addr - PAGE, b.size + 2 * PAGE)
            part = read_smaps_range(b.addr - PAGE, b.size + 2 * PAGE)
            assert [(m.start, m.end, m.path, m.vm_flags) for m in part] == \
                [(m.start, m.end, m.path, m.vm_flags) for m in full]
    finally:
        for b in bufs:
            b.close()
