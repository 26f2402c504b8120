"""The model side of DMA: the client's memory, as the client mapped it with VFIO_USER_DMA_MAP.

Each map arrives with a memfd (SCM_RIGHTS) which the server mmaps MAP_SHARED; `ClientMemory` keeps
the IOVA table and gives the model bounds- and permission-checked access, like an IOMMU would.
Access outside the table is a `DmaFault` (the model reports it as an error status), never a crash.

A map may also come without an fd (QEMU maps its ROM, BIOS and BAR ranges that way: they are not
in a shareable file): it is recorded, so unmaps and overlaps behave as in the kernel's type1, but
the model cannot reach it (access is a `DmaFault`; the DMA_READ/DMA_WRITE messages that would
reach it are not implemented).

A device buffer may span several maps: QEMU behind a vIOMMU with caching mode replays every guest
IOMMU mapping as its own DMA_MAP of one guest page, so a 1 MiB buffer the guest sees as one IOVA
range is 256 maps whose memory is scattered through guest RAM (docs/research/vfio-user.md, §3
"Map granularity"). `read`/`write` walk the maps; `view` joins them zero-copy into one *window*:
an anonymous reservation over which each map's pages are mapped again, in IOVA order, with
`mremap(old_size=0)` (which duplicates a shared mapping), the same remapping an IOMMU does for the
device. Windows are cached (rings are viewed on every poll) and revoked with the maps they use,
those dropped from the cache but still viewed too.

Unmap follows the kernel's type1 (v2) semantics that QEMU's client relies on: one unmap may cover
many maps (every map inside the range goes), a range that covers none succeeds, and a range that
would split a map is refused with EINVAL. Unmap revokes access before the reply is sent. Python's
`mmap` object counts exported buffers, so the table knows whether the model still holds a view; if
it does, the pages are replaced in place (MAP_FIXED) by private zero pages: the stale view keeps
working but no longer reaches the client, and the memfd is closed. The mmap object is kept until
its views are gone, then closed. This is the rule for every view the table gave out, whatever
the model's `on_dma_unmap` hook did (it may raise and keep them): the hook lets a model drop its
views early, revocation never depends on it.

`cut_off` revokes the same way while the maps stay: each map touched is mapped again at a new
address for later access, and the views held of the old mapping reach zero pages. It serves work
the model cannot stop when bus mastering goes off (a worker thread inside zlib): from the config
write's reply on, that work no longer reaches the client's memory
(docs/research/pci-bus-master.md).
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import mmap
import os
from collections import OrderedDict
from collections.abc import Callable

from .. import syscalls as sc
from ..errors import InvalidArgumentError, WarpdriveError
from ..record import field, record

_bisect_right = bisect.bisect_right  # (one global load on the per-access path)


class DmaFault(WarpdriveError):
    """The model touched client memory it may not: unmapped IOVA, wrong permission, or bus
    mastering disabled. Report it as the device would report an IOMMU fault."""

    def __init__(self, iova: int, size: int, write: bool, reason: str) -> None:
        self.iova = iova
        self.size = size
        self.write = write
        self.reason = reason
        kind = "write" if write else "read"
        super().__init__(f"DMA {kind} of {size} bytes at IOVA {iova:#x}: {reason}")


_MREMAP_MAYMOVE = 1
_MREMAP_FIXED = 2
sc.libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_void_p]
sc.libc.mremap.restype = ctypes.c_void_p


def _duplicate(src: int, length: int, dst: int) -> None:
    """Map the pages of the shared mapping at `src` again at `dst` (mremap with old size 0)."""
    res = sc.libc.mremap(src, 0, length, _MREMAP_MAYMOVE | _MREMAP_FIXED, dst)
    if res is None or res == sc.MAP_FAILED or res != dst:
        err = ctypes.get_errno()
        raise OSError(err, f"mremap of {length:#x} bytes at {src:#x} to {dst:#x}: "
                      f"{os.strerror(err)}")


@record
class _Window:
    """Several adjacent maps joined into one contiguous view (see the module docstring)."""

    mm: mmap.mmap
    regions: list[DmaRegion] = field(default_factory=list)
    head: int = 0  # offset of the first byte of the range inside the window


@record(eq=False)
class DmaRegion:
    """One client DMA map. `mm` maps the client's fd from the page below `offset`; `delta` is
    where the region starts inside it."""

    iova: int
    size: int
    readable: bool
    writable: bool
    mm: mmap.mmap | None  # None: the client sent no fd, the model cannot reach this map
    delta: int
    addr: int  # process address of mm (for revocation in place)
    # A view of all of mm, made on first access and released before mm is revoked: `view`
    # slices it (the one-piece fast path) instead of building a new one per access.
    mv: memoryview | None = None

    @property
    def end(self) -> int:
        return self.iova + self.size


class ClientMemory:
    """IOVA -> client memory, for the model's DMA (`DeviceModel.dma`)."""

    MAX_WINDOWS = 64  # cached joined views (see `view`)

    def __init__(self, max_maps: int = 65535,
                 bus_master: Callable[[], bool] | None = None) -> None:
        self.max_maps = max_maps
        self._bus_master = bus_master
        self._regions: list[DmaRegion] = []  # sorted by iova, non-overlapping
        self._starts: list[int] = []
        self._zombies: list[mmap.mmap] = []  # revoked maps whose views the model still holds
        # Windows dropped from the cache while the model still views them: revoked with their
        # maps like cached ones (whatever the model's unmap hook did), closed once free.
        self._retired: list[_Window] = []
        self._windows: OrderedDict[tuple[int, int, bool], _Window] = OrderedDict()
        self.faults = 0

    # -- table management (server side) -----------------------------------------------------
    def add(self, iova: int, size: int, fd: int | None, offset: int, readable: bool,
            writable: bool) -> None:
        """Map `size` bytes of `fd` at `offset` as IOVA [iova, iova+size) (fd None: record the
        range only). Raises OSError with the errno to reply (EEXIST overlap, ENOSPC too many maps,
        EINVAL bad range)."""
        if size <= 0 or iova < 0 or offset < 0 or iova + size > 1 << 64:
            raise OSError(errno.EINVAL, f"invalid DMA range IOVA {iova:#x} size {size:#x}")
        if len(self._regions) >= self.max_maps:
            raise OSError(errno.ENOSPC, f"more than {self.max_maps} DMA maps")
        i = bisect.bisect_right(self._starts, iova)
        if (i > 0 and self._regions[i - 1].end > iova) or (
                i < len(self._regions) and self._regions[i].iova < iova + size):
            raise OSError(errno.EEXIST, f"DMA map at IOVA {iova:#x} overlaps an existing map")
        if fd is None:
            self._regions.insert(i, DmaRegion(iova, size, readable, writable, None, 0, 0))
            self._starts.insert(i, iova)
            return
        st = os.fstat(fd)
        if st.st_size < offset + size:
            raise OSError(errno.EINVAL, f"DMA map of {size:#x} bytes at file offset {offset:#x} "
                          f"runs past the end of the {st.st_size:#x}-byte file")
        base = offset & ~(sc.PAGE_SIZE - 1)
        delta = offset - base
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mm = mmap.mmap(fd, delta + size, flags=mmap.MAP_SHARED, prot=prot, offset=base)
        addr = sc.buffer_address(mm)
        region = DmaRegion(iova, size, readable, writable, mm, delta, addr)
        self._regions.insert(i, region)
        self._starts.insert(i, iova)

    def covered(self, iova: int, size: int) -> list[DmaRegion]:
        """The maps inside [iova, iova+size); OSError(EINVAL) if the range would split one."""
        end = iova + size
        if size <= 0 or iova < 0 or end > 1 << 64 or (iova | size) % sc.PAGE_SIZE:
            raise OSError(errno.EINVAL, f"invalid DMA range IOVA {iova:#x} size {size:#x} "
                          "(empty, unaligned or wrapping)")
        lo = bisect.bisect_right(self._starts, iova) - 1
        if lo >= 0 and self._regions[lo].iova < iova < self._regions[lo].end:
            r = self._regions[lo]
            raise OSError(errno.EINVAL, f"unmap at IOVA {iova:#x} would split the DMA map "
                          f"{r.iova:#x}+{r.size:#x}")
        hi = bisect.bisect_left(self._starts, end)
        if hi > 0 and self._regions[hi - 1].end > end:
            r = self._regions[hi - 1]
            raise OSError(errno.EINVAL, f"unmap ending at IOVA {end:#x} would split the DMA map "
                          f"{r.iova:#x}+{r.size:#x}")
        return self._regions[bisect.bisect_left(self._starts, iova):hi]

    def remove(self, regions: list[DmaRegion]) -> None:
        """Drop these maps (from `covered`) and revoke every reference to them."""
        gone = set()
        for region in regions:
            i = bisect.bisect_left(self._starts, region.iova)
            assert self._regions[i] is region
            self._regions.pop(i)
            self._starts.pop(i)
            self._revoke(region)
            gone.add(id(region))
        self._revoke_windows(gone)

    def _revoke_windows(self, gone: set[int]) -> None:
        """Revoke the joined views (cached or retired) over any map whose id is in `gone`."""
        if gone and self._windows:
            for key, win in list(self._windows.items()):
                if any(id(r) in gone for r in win.regions):
                    del self._windows[key]
                    self._revoke_window(win)
        if gone and self._retired:
            kept = []
            for win in self._retired:
                if any(id(r) in gone for r in win.regions):
                    self._revoke_window(win)
                else:
                    kept.append(win)
            self._retired = kept

    def cut_off(self, spans: list[tuple[int, int]]) -> int:
        """Every view the model holds of the maps touching these (iova, size) spans reaches
        private zero pages from now on, while the table keeps the client's memory: each such map
        is mapped afresh for later access and its old mapping revoked as an unmap revokes it,
        with the windows joined over it. For work the model cannot stop (a job a worker thread
        is running when bus mastering goes off): it writes on, but no longer into the client's
        memory. Returns how many maps were cut."""
        cut: dict[int, DmaRegion] = {}
        for iova, size in spans:
            i = max(0, bisect.bisect_right(self._starts, iova) - 1)
            while i < len(self._regions) and self._regions[i].iova < iova + max(size, 1):
                r = self._regions[i]
                if r.end > iova and r.mm is not None:
                    cut[id(r)] = r
                i += 1
        for r in cut.values():
            old = DmaRegion(r.iova, r.size, r.readable, r.writable, r.mm, r.delta, r.addr, r.mv)
            r.mm, r.mv = self._again(old), None
            # (None: the pages could not be mapped again; the map stays, out of the model's
            # reach like one without an fd, rather than the cut not happening)
            r.addr = sc.buffer_address(r.mm) if r.mm is not None else 0
            self._revoke(old)
        self._revoke_windows(set(cut))
        return len(cut)

    @staticmethod
    def _again(r: DmaRegion) -> mmap.mmap | None:
        """The pages of `r`'s mapping mapped again elsewhere (`_duplicate`, as windows are made:
        Python's mmap does not give out the fd it keeps), with the map's access; None if that
        fails (out of memory or of mappings)."""
        assert r.mm is not None
        length = len(r.mm)
        try:
            fresh = mmap.mmap(-1, length, prot=mmap.PROT_READ | (
                mmap.PROT_WRITE if r.writable else 0))
        except OSError:
            return None
        try:
            _duplicate(r.addr, sc.page_align_up(length), sc.buffer_address(fresh))
        except OSError:
            fresh.close()
            return None
        return fresh

    def clear(self) -> None:
        """Drop every map (client disconnected)."""
        while self._regions:
            self._starts.pop()
            self._revoke(self._regions.pop())
        while self._windows:
            self._revoke_window(self._windows.popitem()[1])
        retired, self._retired = self._retired, []
        for win in retired:
            self._revoke_window(win)

    def _revoke(self, region: DmaRegion) -> None:
        if region.mm is None:
            return
        if region.mv is not None:
            region.mv.release()  # (slices the model still holds keep mm exported: see below)
            region.mv = None
        try:
            region.mm.close()
            return
        except BufferError:
            pass
        # The model still holds a view: swap the pages under it for private zero pages, so the
        # client's memory is out of reach once we reply, then close the mmap when it is free.
        length = region.delta + region.size
        sc.mmap(sc.page_align_up(length), sc.PROT_READ | sc.PROT_WRITE,
                sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED | sc.MAP_NORESERVE,
                addr=region.addr, what="revoking a DMA map the model still references")
        self._zombies.append(region.mm)
        region.mm = None

    def _revoke_window(self, win: _Window) -> None:
        try:
            win.mm.close()
            return
        except BufferError:
            pass
        # Held by the model: its pages still reach the client's memory; swap in zero pages.
        sc.mmap(len(win.mm), sc.PROT_READ | sc.PROT_WRITE,
                sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED | sc.MAP_NORESERVE,
                addr=sc.buffer_address(win.mm), what="revoking a joined DMA view")
        self._zombies.append(win.mm)

    def reap(self) -> int:
        """Close revoked maps whose views are gone; returns how many are still held."""
        self._zombies = self._close_free(self._zombies)
        self._retire_free()
        return len(self._zombies)

    @staticmethod
    def _close_free(mms: list[mmap.mmap]) -> list[mmap.mmap]:
        still = []
        for mm in mms:
            try:
                mm.close()
            except BufferError:
                still.append(mm)
        return still

    def _retire_free(self) -> None:
        """Close the retired windows no longer viewed."""
        if self._retired:
            held = {id(mm) for mm in self._close_free([w.mm for w in self._retired])}
            self._retired = [w for w in self._retired if id(w.mm) in held]

    @property
    def held_after_unmap(self) -> int:
        return len(self._zombies)

    def region_at(self, iova: int) -> DmaRegion | None:
        """The map that starts exactly at `iova`, if any."""
        i = bisect.bisect_left(self._starts, iova)
        if i < len(self._starts) and self._starts[i] == iova:
            return self._regions[i]
        return None

    def mappings(self) -> list[tuple[int, int, bool, bool]]:
        """(iova, size, readable, writable) of each live map, by IOVA."""
        return [(r.iova, r.size, r.readable, r.writable) for r in self._regions]

    # -- access (model side) ----------------------------------------------------------------
    def _find(self, iova: int, size: int, write: bool) -> list[tuple[mmap.mmap, int, int]]:
        """Pieces (mmap, offset in it, length) covering [iova, iova+size)."""
        return [(r.mm, start, n) for r, start, n in self._find_regions(iova, size, write)
                if r.mm is not None]

    def _find_regions(self, iova: int, size: int,
                      write: bool) -> list[tuple[DmaRegion, int, int]]:
        """Pieces (map, offset in its mmap, length) covering [iova, iova+size)."""
        if size <= 0:
            raise InvalidArgumentError(f"DMA of {size} bytes at IOVA {iova:#x}: the size must be "
                                       "positive", hint="the model computed a bad length")
        if self._bus_master is not None and not self._bus_master():
            self.faults += 1
            raise DmaFault(iova, size, write, "bus mastering is disabled (PCI_COMMAND)")
        pieces: list[tuple[DmaRegion, int, int]] = []
        pos, end = iova, iova + size
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if i < 0 or i >= len(self._regions) or not (
                    self._regions[i].iova <= pos < self._regions[i].end):
                self.faults += 1
                raise DmaFault(iova, size, write, f"IOVA {pos:#x} is not mapped by the client")
            r = self._regions[i]
            if (write and not r.writable) or (not write and not r.readable):
                self.faults += 1
                raise DmaFault(iova, size, write,
                               f"the client mapped IOVA {r.iova:#x} "
                               f"{'read-only' if write else 'write-only'}")
            if r.mm is None:
                self.faults += 1
                raise DmaFault(iova, size, write, f"the client mapped IOVA {r.iova:#x} without "
                               "shared memory (no fd), which this server cannot reach")
            n = min(end, r.end) - pos
            pieces.append((r, r.delta + pos - r.iova, n))
            pos += n
            i += 1
        return pieces

    def _one_map(self, iova: int, size: int, write: bool) -> memoryview | None:
        """All of the client's map holding [iova, iova+size) when one map holds it and the
        access is allowed (bus mastering on, the map's permission): the usual case, looked up
        without building a list of pieces. None: the general path decides (and faults)."""
        i = _bisect_right(self._starts, iova) - 1
        if i < 0 or size <= 0:
            return None
        r = self._regions[i]
        start = iova - r.iova
        if start + size > r.size or not (r.writable if write else r.readable):
            return None
        mv = r.mv
        if mv is None:
            if r.mm is None:
                return None
            mv = r.mv = memoryview(r.mm)
        bus_master = self._bus_master
        if bus_master is not None and not bus_master():
            return None
        start += r.delta
        return mv[start:start + size]

    def read(self, iova: int, size: int) -> bytes:
        """Copy `size` bytes of client memory at `iova`."""
        mv = self._one_map(iova, size, False)
        if mv is not None:
            return bytes(mv)
        out = bytearray()
        for mm, start, n in self._find(iova, size, write=False):
            out += mm[start:start + n]
        return bytes(out)

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` into client memory at `iova`."""
        mv = memoryview(data).cast("B")
        dst = self._one_map(iova, len(mv), True)
        if dst is not None:
            dst[:] = mv
            return
        pos = 0
        for mm, start, n in self._find(iova, len(mv), write=True):
            mm[start:start + n] = mv[pos:pos + n]
            pos += n

    def view(self, iova: int, size: int, write: bool = False) -> memoryview:
        """Zero-copy view of client memory (read-only unless `write`), across as many adjacent
        maps as the range covers. Release it (`view.release()` or drop it) when done; see
        `DeviceModel.on_dma_unmap`."""
        # The usual case first, polled per job (rings, buffers): the range lies in one map.
        one = self._one_map(iova, size, write)
        if one is not None:
            return one if write else one.toreadonly()
        pieces = self._find_regions(iova, size, write)
        if len(pieces) == 1:
            r, start, n = pieces[0]
            assert r.mm is not None
            mv = memoryview(r.mm)[start:start + n]
        else:
            win = self._window(iova, size, write, pieces)
            mv = memoryview(win.mm)[win.head:win.head + size]
        return mv if write else mv.toreadonly()

    def _window(self, iova: int, size: int, write: bool,
                pieces: list[tuple[DmaRegion, int, int]]) -> _Window:
        key = (iova, size, write)
        win = self._windows.get(key)
        if win is not None:
            self._windows.move_to_end(key)
            return win
        page = sc.PAGE_SIZE
        head = pieces[0][1] % page
        # Pages can only be mapped whole: every seam between two maps must fall on a page
        # boundary on both sides (true of page-sized maps, which is what QEMU replays).
        for k, (r, start, n) in enumerate(pieces):
            if (k > 0 and start % page) or (k < len(pieces) - 1 and (start + n) % page):
                self.faults += 1
                raise DmaFault(iova, size, write, f"the range spans client DMA maps whose seam "
                               f"at IOVA {r.iova:#x} is not page-aligned")
        mm = mmap.mmap(-1, sc.page_align_up(head + size))
        base = sc.buffer_address(mm)
        pos = 0
        try:
            for r, start, n in pieces:
                skip = start % page
                length = sc.page_align_up(skip + n)
                _duplicate(r.addr + start - skip, length, base + pos)
                pos += length
        except OSError as e:
            mm.close()
            self.faults += 1
            raise DmaFault(iova, size, write, f"cannot join the client's DMA maps: {e}") \
                from None
        win = _Window(mm, [r for r, _, _ in pieces], head)
        self._windows[key] = win
        while len(self._windows) > self.MAX_WINDOWS:
            self._retired.append(self._windows.popitem(last=False)[1])
        self._retire_free()
        return win
