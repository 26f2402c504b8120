"""Device-model framework pieces that need no server: config-space emulation, the client-memory
DMA table (on real memfds and real mmaps) and the model registry."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from warpdrive.emu.dma import ClientMemory, DmaFault
from warpdrive.emu.pci_config import ConfigBuilder, PciConfig, bar_size
from warpdrive.emu.registry import available_models, load_model
from warpdrive.errors import DeviceNotFoundError, InvalidArgumentError
from warpdrive.uapi import pci_regs as R

PAGE = os.sysconf("SC_PAGE_SIZE")


def _cfg() -> PciConfig:
    b = ConfigBuilder(vendor_id=0x1234, device_id=0xABCD, revision=3, class_code=0x120000)
    b.set_bar(0, 0x3000)
    b.set_bar(2, 0x100000, mem64=True, prefetchable=True)
    b.set_interrupt_pin(1)
    msi = b.add_msi(vectors=4, maskable=True)
    msix = b.add_msix(8, table_bar=0, table_offset=0x2000, pba_bar=0, pba_offset=0x2800)
    assert (msi, msix) == (0x40, 0x58)
    return PciConfig(b.build(), {0: (0x3000, False), 2: (0x100000, True)})


def rd(cfg: PciConfig, off: int, width: int) -> int:
    return int.from_bytes(cfg.read(off, width), "little")


def wr(cfg: PciConfig, off: int, width: int, value: int) -> None:
    cfg.write(off, value.to_bytes(width, "little"))


def test_config_header_and_capability_list() -> None:
    cfg = _cfg()
    assert rd(cfg, R.PCI_VENDOR_ID, 2) == 0x1234 and rd(cfg, R.PCI_DEVICE_ID, 2) == 0xABCD
    assert rd(cfg, R.PCI_CLASS_REVISION, 4) == 0x12000003
    assert rd(cfg, R.PCI_STATUS, 2) & R.PCI_STATUS_CAP_LIST
    assert rd(cfg, R.PCI_CAPABILITY_LIST, 1) == 0x40
    assert cfg.read(0x40, 2) == bytes([R.PCI_CAP_ID_MSI, 0x58])
    assert cfg.read(0x58, 2) == bytes([R.PCI_CAP_ID_MSIX, 0])
    assert cfg.msix is not None and cfg.msix.vectors == 8 and cfg.msix.table_offset == 0x2000
    assert rd(cfg, R.PCI_BASE_ADDRESS_2, 4) == (R.PCI_BASE_ADDRESS_MEM_TYPE_64
                                                | R.PCI_BASE_ADDRESS_MEM_PREFETCH)


def test_config_write_masks() -> None:
    cfg = _cfg()
    wr(cfg, R.PCI_VENDOR_ID, 4, 0xFFFF_FFFF)  # read-only
    assert rd(cfg, R.PCI_VENDOR_ID, 2) == 0x1234
    wr(cfg, R.PCI_COMMAND, 2, 0xFFFF)  # only the defined command bits stick
    assert rd(cfg, R.PCI_COMMAND, 2) == 0x0547 and cfg.bus_master_enabled
    cfg.data[R.PCI_STATUS + 1] |= 0x20  # received master abort, set by the "device"
    wr(cfg, R.PCI_STATUS, 2, 0x2000)  # write 1 to clear
    assert not rd(cfg, R.PCI_STATUS, 2) & 0x2000
    assert rd(cfg, R.PCI_STATUS, 2) & R.PCI_STATUS_CAP_LIST  # not write-1-to-clear
    wr(cfg, R.PCI_INTERRUPT_LINE, 1, 11)
    assert rd(cfg, R.PCI_INTERRUPT_LINE, 1) == 11 and rd(cfg, R.PCI_INTERRUPT_PIN, 1) == 1


def test_config_bar_sizing() -> None:
    cfg = _cfg()
    wr(cfg, R.PCI_BASE_ADDRESS_0, 4, 0xFFFF_FFFF)
    assert rd(cfg, R.PCI_BASE_ADDRESS_0, 4) == (~(bar_size(0x3000) - 1)) & 0xFFFF_FFF0
    assert bar_size(0x3000) == 0x4000
    wr(cfg, R.PCI_BASE_ADDRESS_2, 4, 0xFFFF_FFFF)
    wr(cfg, R.PCI_BASE_ADDRESS_3, 4, 0xFFFF_FFFF)
    lo = rd(cfg, R.PCI_BASE_ADDRESS_2, 4)
    assert lo == 0xFFF0_0000 | R.PCI_BASE_ADDRESS_MEM_TYPE_64 | R.PCI_BASE_ADDRESS_MEM_PREFETCH
    assert rd(cfg, R.PCI_BASE_ADDRESS_3, 4) == 0xFFFF_FFFF
    wr(cfg, R.PCI_BASE_ADDRESS_1, 4, 0xFFFF_FFFF)  # not implemented: stays 0
    assert rd(cfg, R.PCI_BASE_ADDRESS_1, 4) == 0
    cfg.reset()
    assert rd(cfg, R.PCI_BASE_ADDRESS_0, 4) == 0


def test_config_msi_and_msix_enables() -> None:
    cfg = _cfg()
    wr(cfg, 0x40 + R.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_0003)
    assert rd(cfg, 0x40 + R.PCI_MSI_ADDRESS_LO, 4) == 0xFEE0_0000  # low two bits reserved
    cfg.set_msi_enabled(True, 4)
    flags = rd(cfg, 0x40 + R.PCI_MSI_FLAGS, 2)
    assert flags & R.PCI_MSI_FLAGS_ENABLE and (flags & R.PCI_MSI_FLAGS_QSIZE) >> 4 == 2
    assert (flags & R.PCI_MSI_FLAGS_QMASK) >> 1 == 2  # capable of 4: read-only
    cfg.set_msix_enabled(True)
    assert rd(cfg, 0x58 + R.PCI_MSIX_FLAGS, 2) & R.PCI_MSIX_FLAGS_ENABLE
    assert rd(cfg, 0x58 + R.PCI_MSIX_FLAGS, 2) & R.PCI_MSIX_FLAGS_QSIZE == 7


def test_config_builder_refuses_bad_input() -> None:
    b = ConfigBuilder(vendor_id=1, device_id=2)
    with pytest.raises(InvalidArgumentError, match="3 vectors") as info:
        b.add_msi(vectors=3)
    assert info.value.hint == "give 1, 2, 4, 8, 16 or 32"
    with pytest.raises(InvalidArgumentError):
        b.set_bar(5, 0x1000, mem64=True)
    with pytest.raises(InvalidArgumentError):
        ConfigBuilder(vendor_id=1, device_id=2, size=512)


# -- client memory (the model's DMA) ---------------------------------------------------------
@pytest.fixture
def memfd():
    fd = os.memfd_create("test-dma", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4 * PAGE)
    yield fd
    os.close(fd)


def test_dma_read_write_view(memfd: int) -> None:
    mem = ClientMemory()
    mem.add(0x10000, 2 * PAGE, memfd, PAGE, readable=True, writable=True)
    mem.write(0x10000 + 8, b"hello")
    assert os.pread(memfd, 5, PAGE + 8) == b"hello"  # reached the client's file
    os.pwrite(memfd, b"world", PAGE + 100)
    assert mem.read(0x10000 + 100, 5) == b"world"
    v = mem.view(0x10000, 16, write=True)
    v[0:4] = b"abcd"
    assert os.pread(memfd, 4, PAGE) == b"abcd"
    ro = mem.view(0x10000, 16)
    assert ro.readonly
    v.release()
    ro.release()
    assert mem.mappings() == [(0x10000, 2 * PAGE, True, True)]


def test_dma_faults(memfd: int) -> None:
    master = [True]
    mem = ClientMemory(bus_master=lambda: master[0])
    mem.add(0x10000, PAGE, memfd, 0, readable=True, writable=False)
    with pytest.raises(DmaFault, match="not mapped"):
        mem.read(0x20000, 4)
    with pytest.raises(DmaFault, match="not mapped"):
        mem.read(0x10000 + PAGE - 2, 4)  # runs off the end
    with pytest.raises(DmaFault, match="read-only"):
        mem.write(0x10000, b"x")
    with pytest.raises(DmaFault, match="read-only"):
        mem.view(0x10000, 4, write=True)
    master[0] = False
    with pytest.raises(DmaFault, match="bus mastering"):
        mem.read(0x10000, 4)
    assert mem.faults == 5


def test_dma_table_rules(memfd: int) -> None:
    mem = ClientMemory(max_maps=2)
    mem.add(0x10000, PAGE, memfd, 0, True, True)
    with pytest.raises(OSError) as ei:
        mem.add(0x10000 + PAGE - 0x100, PAGE, memfd, PAGE, True, True)
    assert ei.value.errno == errno.EEXIST
    mem.add(0x10000 + PAGE, PAGE, memfd, PAGE, True, True)  # adjacent is fine
    with pytest.raises(OSError) as ei:
        mem.add(0x90000, PAGE, memfd, 0, True, True)
    assert ei.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as ei:
        ClientMemory().add(0, 8 * PAGE, memfd, 0, True, True)  # past the end of the file
    assert ei.value.errno == errno.EINVAL
    # reads, writes and views may cross adjacent maps
    mem.write(0x10000 + PAGE - 2, b"ABCD")
    assert mem.read(0x10000 + PAGE - 2, 4) == b"ABCD"
    with mem.view(0x10000 + PAGE - 2, 4) as v:
        assert bytes(v) == b"ABCD"
    with pytest.raises(OSError) as ei:
        mem.covered(0x10000, PAGE + 1)  # an unmap may not split a map
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        mem.covered(0x10000 + PAGE // 2, PAGE)
    assert ei.value.errno == errno.EINVAL
    assert mem.covered(0x50000, PAGE) == []  # nothing there: nothing to unmap
    mem.remove(mem.covered(0x10000, 2 * PAGE))  # one unmap, both maps
    assert mem.mappings() == []


def test_dma_map_without_fd_is_recorded_but_unreachable(memfd: int) -> None:
    mem = ClientMemory()
    mem.add(0xFFFC0000, 0x40000, None, 0, True, False)  # QEMU's BIOS range: no fd
    mem.add(0x10000, PAGE, memfd, 0, True, True)
    with pytest.raises(OSError) as ei:
        mem.add(0xFFFD0000, PAGE, memfd, 0, True, True)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(DmaFault, match="without shared memory"):
        mem.read(0xFFFC0000, 4)
    assert mem.mappings() == [(0x10000, PAGE, True, True), (0xFFFC0000, 0x40000, True, False)]
    mem.remove(mem.covered(0, 1 << 64))
    assert mem.mappings() == []


def test_dma_unmap_revokes_a_held_view(memfd: int) -> None:
    mem = ClientMemory()
    mem.add(0x10000, PAGE, memfd, 0, True, True)
    held = mem.view(0x10000, 8, write=True)
    held[:4] = b"1111"
    assert os.pread(memfd, 4, 0) == b"1111"
    mem.remove(mem.covered(0x10000, PAGE))
    assert mem.held_after_unmap == 1
    held[:4] = b"2222"  # the stale view still works, but no longer reaches the client
    assert os.pread(memfd, 4, 0) == b"1111"
    assert bytes(held[:4]) == b"2222"
    with pytest.raises(DmaFault):
        mem.read(0x10000, 4)
    held.release()
    assert mem.reap() == 0 and mem.held_after_unmap == 0


# -- buffers spanning many page-sized maps (QEMU's vIOMMU replays) ---------------------------------
def _scattered(memfd: int, npages: int, iova: int = 0x40000, writable: bool = True,
               ) -> tuple[ClientMemory, list[int]]:
    """Map IOVA pages in order onto file pages in reverse order, one DMA map per page, as
    QEMU does behind intel-iommu with caching mode (the guest's pages are scattered)."""
    os.ftruncate(memfd, npages * PAGE)
    mem = ClientMemory()
    order = list(reversed(range(npages)))
    for i, page in enumerate(order):
        mem.add(iova + i * PAGE, PAGE, memfd, page * PAGE, True, writable)
    return mem, order


def test_a_view_joins_scattered_page_maps_zero_copy(memfd: int) -> None:
    mem, order = _scattered(memfd, 4)
    for i, page in enumerate(order):
        os.pwrite(memfd, bytes([0x41 + i]) * PAGE, page * PAGE)
    with mem.view(0x40000 + 100, 3 * PAGE, write=True) as v:
        assert bytes(v[:3]) == b"AAA" and v[PAGE] == 0x42 and v[3 * PAGE - 1] == 0x44
        v[PAGE - 100:PAGE - 100 + 2] = b"xy"  # the first byte of the second IOVA page
        v[2 * PAGE - 100 - 1] = ord("z")  # the last byte of the second IOVA page
    assert os.pread(memfd, 2, order[1] * PAGE) == b"xy"  # reached the client's file
    assert os.pread(memfd, 1, order[1] * PAGE + PAGE - 1) == b"z"
    os.pwrite(memfd, b"live", order[2] * PAGE)  # the client writes after the view was made
    with mem.view(0x40000, 4 * PAGE) as ro:
        assert ro.readonly and bytes(ro[2 * PAGE:2 * PAGE + 4]) == b"live"


def test_joined_views_are_cached_and_keep_permissions(memfd: int) -> None:
    mem, _ = _scattered(memfd, 3, writable=False)
    a = mem.view(0x40000, 3 * PAGE)
    b = mem.view(0x40000, 3 * PAGE)
    assert len(mem._windows) == 1  # one window for both
    with pytest.raises(DmaFault, match="read-only"):
        mem.view(0x40000, 3 * PAGE, write=True)
    a.release()
    b.release()


def test_unmap_revokes_a_held_joined_view(memfd: int) -> None:
    mem, order = _scattered(memfd, 3)
    held = mem.view(0x40000, 3 * PAGE, write=True)
    mem.remove(mem.covered(0x40000 + PAGE, PAGE))  # one page of three
    assert mem.held_after_unmap == 1
    held[:4] = b"gone"
    assert os.pread(memfd, 4, order[0] * PAGE) != b"gone"  # out of the client's reach
    with pytest.raises(DmaFault, match="not mapped"):
        mem.view(0x40000, 3 * PAGE)
    held.release()
    assert mem.reap() == 0
    # an unheld window is simply dropped with its maps
    mem2, _ = _scattered(memfd, 2, iova=0x80000)
    mem2.view(0x80000, 2 * PAGE).release()
    mem2.remove(mem2.covered(0x80000, 2 * PAGE))
    assert mem2.held_after_unmap == 0 and not mem2._windows


def test_unmap_revokes_every_view_whatever_the_model_hook_did(memfd: int) -> None:
    """A model whose on_dma_unmap raises (the server logs it and unmaps anyway) lets go of
    nothing, so the DMA layer revokes it all itself: a kept ring view of one map, a kept
    buffer slice, a joined view still cached and one dropped from the cache (held since) stop
    reaching the client's memory at the unmap; the rest at the client's leaving (clear)."""
    mem, order = _scattered(memfd, 4)  # IOVA 0x40000.. : 4 page maps

    def on_dma_unmap(iova: int, size: int) -> None:
        raise RuntimeError("model bug")

    def unmap(iova: int, size: int) -> None:  # as Function.handle_dma_unmap does
        regions = mem.covered(iova, size)
        for r in regions:
            with contextlib.suppress(RuntimeError):  # (Function.call_model logs it)
                on_dma_unmap(r.iova, r.size)
        mem.remove(regions)

    ring = mem.view(0x40000, 64, write=True)
    flat = mem.view(0x40000 + PAGE, PAGE, write=True)[16:32]
    old = mem.view(0x40000 + 8, PAGE, write=True)  # joins pages 0-1
    for k in range(ClientMemory.MAX_WINDOWS):  # other joined views push it out of the cache
        mem.view(0x40000 + 2 * PAGE + 16 + k, PAGE).release()
    assert not any(w.mm is old.obj for w in mem._windows.values())
    cached = mem.view(0x40000 + 2 * PAGE + 8, PAGE, write=True)  # joins pages 2-3
    for v in (ring, flat, old, cached):
        v[:4] = b"live"
    assert os.pread(memfd, 4, order[0] * PAGE) == b"live"
    unmap(0x40000, 2 * PAGE)
    for v in (ring, flat, old, cached):
        v[:4] = b"gone"
    for page, at in ((0, 0), (1, 16), (0, 8)):  # ring, flat, old: out of the client's reach
        assert os.pread(memfd, 4, order[page] * PAGE + at) == b"live", (page, at)
    assert os.pread(memfd, 4, order[2] * PAGE + 8) == b"gone"  # still mapped: still live
    mem.clear()  # the client leaves
    cached[:4] = b"left"
    assert os.pread(memfd, 4, order[2] * PAGE + 8) == b"gone"
    for v in (ring, flat, old, cached):
        v.release()
    assert mem.reap() == 0 and not mem._retired


def test_cut_off_points_held_views_at_zero_pages_and_keeps_the_memory(memfd: int) -> None:
    """`cut_off` (bus mastering off under a job the model cannot stop): the views held of the
    spans' maps (a slice of one map, a joined view, a read-only one) stop reaching the
    client's memory, the maps stay in the table and later access reaches the client's memory
    again; a map outside the spans is untouched."""
    os.ftruncate(memfd, 8 * PAGE)
    mem = ClientMemory()
    mem.add(0x10000, 2 * PAGE, memfd, 0, True, True)  # one map of two pages
    mem.add(0x20000, PAGE, memfd, 2 * PAGE, True, False)  # read-only
    mem.add(0x30000, PAGE, memfd, 3 * PAGE, True, True)  # outside the spans
    mem.add(0x40000, PAGE, memfd, 5 * PAGE, True, True)  # two maps joined by one view
    mem.add(0x41000, PAGE, memfd, 4 * PAGE, True, True)
    flat = mem.view(0x10000 + 100, PAGE, write=True)
    ro = mem.view(0x20000, 16)
    other = mem.view(0x30000, 16, write=True)
    joined = mem.view(0x40000 + 8, PAGE, write=True)
    os.pwrite(memfd, b"ro!!", 2 * PAGE)
    assert mem.cut_off([(0x10000 + 100, PAGE), (0x20000, 16), (0x40000 + 8, PAGE)]) == 4
    assert mem.mappings()[0] == (0x10000, 2 * PAGE, True, True)
    for v in (flat, joined, other):
        v[:4] = b"late"
    assert os.pread(memfd, 4, 100) == bytes(4)  # the held views write into zero pages
    assert os.pread(memfd, 4, 5 * PAGE + 8) == bytes(4)
    assert os.pread(memfd, 4, 3 * PAGE) == b"late"  # (not cut: still the client's)
    assert bytes(ro[:4]) == bytes(4)
    # later access: the client's memory, as before the cut, with each map's permission
    os.pwrite(memfd, b"back", 100)
    assert mem.read(0x10000 + 100, 4) == b"back"
    mem.write(0x10000 + PAGE, b"mine")
    assert os.pread(memfd, 4, PAGE) == b"mine"
    assert mem.read(0x20000, 4) == b"ro!!"
    with pytest.raises(DmaFault, match="read-only"):
        mem.view(0x20000, 4, write=True)
    with mem.view(0x40000 + 8, PAGE, write=True) as again:
        again[PAGE - 8:PAGE - 4] = b"join"
    assert os.pread(memfd, 4, 4 * PAGE) == b"join"
    assert mem.held_after_unmap == 3  # the cut mappings, until their views go
    for v in (flat, ro, other, joined):
        v.release()
    assert mem.reap() == 0 and not mem._retired


def test_cut_off_that_cannot_map_the_memory_again_still_cuts(memfd: int,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    """Out of memory (or of mappings) while mapping a cut map again: the cut happens all the
    same (the held view reaches zero pages), and the map stays out of the model's reach (a
    DmaFault, as a map without an fd) instead of the model writing on."""
    import warpdrive.emu.dma as dma_mod

    def no_room(src: int, length: int, dst: int) -> None:
        raise OSError(errno.ENOMEM, "mremap: no room")

    mem = ClientMemory()
    mem.add(0x10000, PAGE, memfd, 0, True, True)
    held = mem.view(0x10000, 16, write=True)
    monkeypatch.setattr(dma_mod, "_duplicate", no_room)
    assert mem.cut_off([(0x10000, 16)]) == 1
    held[:4] = b"late"
    assert os.pread(memfd, 4, 0) == bytes(4)
    with pytest.raises(DmaFault, match="without shared memory"):
        mem.read(0x10000, 4)
    held.release()
    assert mem.reap() == 0


def test_a_view_refuses_maps_that_do_not_meet_on_a_page(memfd: int) -> None:
    os.ftruncate(memfd, 4 * PAGE)
    mem = ClientMemory()
    mem.add(0x10000, PAGE + 512, memfd, 0, True, True)  # ends inside a page
    mem.add(0x10000 + PAGE + 512, PAGE, memfd, 2 * PAGE, True, True)
    mem.write(0x10000 + PAGE + 510, b"abcd")  # copies still work
    assert mem.read(0x10000 + PAGE + 510, 4) == b"abcd"
    with pytest.raises(DmaFault, match="not page-aligned"):
        mem.view(0x10000 + PAGE, 1024)


def test_registry() -> None:
    names = available_models()
    assert "testdev" in names
    cls = load_model("testdev")
    assert cls.name == "testdev" and (cls.vendor_id, cls.device_id) == (0x1234, 0x7E57)
    with pytest.raises(DeviceNotFoundError, match="no device model named 'nosuch'"):
        load_model("nosuch")
    with pytest.raises(InvalidArgumentError):
        load_model("../etc")
