"""Parse `/proc/<pid>/smaps` into the facts a DMA check needs: range, permissions, backing, VmFlags.

`/proc/self/maps` lacks VmFlags (`io`, `pf`, `dc`, `ht`), which is what tells MMIO from RAM and
shows whether MADV_DONTFORK took effect, so the smaps file is read instead.
"""

from __future__ import annotations

import os
import re

from ..record import field, record

_HEADER = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][sp]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$"
)


@record
class Mapping:
    """One VMA as smaps reports it."""

    start: int
    end: int  # exclusive
    perms: str
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str
    vm_flags: frozenset[str] = frozenset()
    kernel_page_size: int = 4096
    fields: dict[str, int] = field(default_factory=dict)  # kB-valued lines: Rss, Locked, ...

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def deleted(self) -> bool:
        return self.path.endswith(" (deleted)")


def parse_smaps(text: str) -> list[Mapping]:
    maps: list[Mapping] = []
    cur: Mapping | None = None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            cur = Mapping(
                start=int(m.group(1), 16), end=int(m.group(2), 16), perms=m.group(3),
                offset=int(m.group(4), 16), dev_major=int(m.group(5), 16),
                dev_minor=int(m.group(6), 16), inode=int(m.group(7)), path=m.group(8),
            )
            maps.append(cur)
            continue
        if cur is None:
            continue
        key, _, rest = line.partition(":")
        rest = rest.strip()
        if key == "VmFlags":
            cur.vm_flags = frozenset(rest.split())
        elif key == "KernelPageSize":
            cur.kernel_page_size = int(rest.split()[0]) * 1024
        elif rest.endswith(" kB"):
            try:
                cur.fields[key] = int(rest.split()[0])
            except ValueError:
                pass
    return maps


def read_smaps(pid: int | str = "self") -> list[Mapping]:
    with open(f"/proc/{pid}/smaps") as f:
        return parse_smaps(f.read())


_HEADER_START = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ", re.M)


def read_smaps_range(addr: int, length: int, pid: int | str = "self") -> list[Mapping]:
    """The smaps entries overlapping [addr, addr+length), cheaply: the kernel generates smaps one
    VMA at a time in address order, so reading stops at the first VMA past the range, and only
    the overlapping entries are parsed (a full parse of a large process costs milliseconds)."""
    end = addr + length
    chunks: list[str] = []
    fd = os.open(f"/proc/{pid}/smaps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            chunk = os.read(fd, 1 << 16).decode(errors="replace")
            if not chunk:
                break
            chunks.append(chunk)
            if any(int(m.group(1), 16) >= end for m in _HEADER_START.finditer(chunk)):
                break
    finally:
        os.close(fd)
    text = "".join(chunks)
    heads = list(_HEADER_START.finditer(text))
    out: list[Mapping] = []
    for i, m in enumerate(heads):
        start, stop = int(m.group(1), 16), int(m.group(2), 16)
        if stop <= addr:
            continue
        if start >= end:
            break
        block_end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out.extend(parse_smaps(text[m.start():block_end]))
    return out


def mappings_in_range(maps: list[Mapping], addr: int,
                      length: int) -> tuple[list[Mapping], int | None]:
    """Return the mappings covering [addr, addr+length) in order, and the first unmapped address
    inside the range (None when the range is fully covered)."""
    end = addr + length
    out = [m for m in maps if m.start < end and m.end > addr]
    out.sort(key=lambda m: m.start)
    pos = addr
    for m in out:
        if m.start > pos:
            return out, pos
        pos = max(pos, m.end)
    if pos < end:
        return out, pos
    return out, None


def filesystem_types(pid: int | str = "self") -> dict[tuple[int, int], str]:
    """Map (major, minor) -> filesystem type, from mountinfo: tells tmpfs/hugetlbfs files from
    files on a disk filesystem."""
    out: dict[tuple[int, int], str] = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            major, _, minor = parts[2].partition(":")
            out[(int(major), int(minor))] = parts[sep + 1]
    return out
