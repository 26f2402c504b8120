"""IOMMU translation faults of one device, read from the kernel log (/dev/kmsg).

Neither VFIO nor iommufd tells user space that the IOMMU blocked a DMA (iommufd's fault queues
exist only for devices that can take page requests, PRI/IOPF). The kernel's IOMMU driver logs the
fault; this is the only place user space can see it. Some devices make that matter: QEMU's edu
ignores the result of its DMA and reports completion anyway (reads of a blocked address fill its
buffer with zeros, writes are dropped), so without the log a faulted transfer looks successful.

Reading /dev/kmsg needs root or CAP_SYSLOG when `kernel.dmesg_restrict=1`; without access the
watch is simply unavailable. The fault printouts are rate-limited by the kernel: VT-d's handler
spends 3 of its 10 tokens per 5 s on each fault (the "DRHD: handling fault" line, the record, and
the end-of-records check), so only about three faults per 5 s are logged; later ones go unseen.
VT-d names the requester as bus:dev.fn without the PCI domain up to Linux 6.x ("[00:03.0]"), so on
multi-segment machines a fault on another segment's function with the same bus:dev.fn would be
attributed here too; Linux 7.x prints the domain as well ("[0000:00:03.0]").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ...forkguard import close_fd_quietly

# drivers/iommu/intel/dmar.c: "[DMA Read NO_PASID] Request device [00:03.0] fault addr 0x...
# [fault reason 0x06] PTE Read access is not set" (prefixed "DMAR: "); 7.x names the device
# with its PCI domain, "[0000:00:03.0]".
_VTD = re.compile(
    r"\[(?P<kind>DMA Read|DMA Write)(?: NO_PASID| PASID 0x[0-9a-fA-F]+)?\] Request device "
    r"\[(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\."
    r"(?P<fn>[0-7])\] fault addr "
    r"0x(?P<addr>[0-9a-fA-F]+)(?: \[fault reason 0x(?P<reason>[0-9a-fA-F]+)\] ?(?P<text>.*))?")
# drivers/iommu/amd/iommu.c: "Event logged [IO_PAGE_FAULT device=0000:00:03.0 domain=0x0002
# address=0x... flags=0x0020]", or with the device named by the dev_printk prefix instead.
_AMD = re.compile(
    r"(?:(?P<prefix>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]): )?(?:AMD-Vi: )?"
    r"Event logged \[IO_PAGE_FAULT (?:device=(?P<bdf>[0-9a-fA-F:.]+) )?domain=0x[0-9a-fA-F]+ "
    r"address=0x(?P<addr>[0-9a-fA-F]+) flags=0x(?P<flags>[0-9a-fA-F]+)\]")


@dataclass(frozen=True)
class FaultRecord:
    """One logged IOMMU fault: which function, read or write, the faulting IOVA, why."""

    requester: str  # "00:03.0" (VT-d up to 6.x) or "0000:00:03.0" (VT-d 7.x, AMD-Vi)
    access: str  # "read", "write" or "unknown"
    address: int
    reason: str
    line: str  # the log line as the kernel wrote it

    def names(self, bdf: str) -> bool:
        """True if this fault was raised by PCI function `bdf` (0000:bb:dd.f)."""
        bdf = bdf.lower()
        req = self.requester.lower()
        return bdf == req or bdf.split(":", 1)[-1] == req

    def __str__(self) -> str:
        return (f"IOMMU {self.access} fault by {self.requester} at IOVA {self.address:#x}"
                f"{': ' + self.reason if self.reason else ''}")


def parse_fault_line(text: str) -> FaultRecord | None:
    """A FaultRecord if `text` (one kernel log message) reports an IOMMU translation fault."""
    m = _VTD.search(text)
    if m:
        req = f"{m['bus']}:{m['dev']}.{m['fn']}".lower()
        if m["domain"]:
            req = f"{m['domain']}:{req}".lower()
        reason = (m["text"] or "").strip()
        if m["reason"]:
            code = f"fault reason {int(m['reason'], 16):#04x}"
            reason = f"{code} ({reason})" if reason else code
        return FaultRecord(req, "read" if m["kind"] == "DMA Read" else "write",
                           int(m["addr"], 16), reason, text)
    m = _AMD.search(text)
    if m:
        req = (m["bdf"] or m["prefix"] or "?").lower()
        flags = int(m["flags"], 16)
        # AMD-Vi event flags: bit 5 (0x20) RW, set for a write
        access = "write" if flags & 0x20 else "read"
        return FaultRecord(req, access, int(m["addr"], 16), f"flags {flags:#06x}", text)
    return None


def kmsg_message(record: bytes) -> str:
    """The message text of one /dev/kmsg record ("prio,seq,ts,flags;text\\n KEY=val...")."""
    line = record.decode("utf-8", "replace").split("\n", 1)[0]
    _, sep, msg = line.partition(";")
    return msg if sep else line


class KmsgFaultWatch:
    """Reads kernel log records appended after it was opened and keeps the IOMMU faults that
    name one device."""

    def __init__(self, fd: int, bdf: str) -> None:
        self.fd = fd
        self.bdf = bdf

    @classmethod
    def open(cls, bdf: str, path: str = "/dev/kmsg") -> KmsgFaultWatch | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None  # no permission (dmesg_restrict) or no /dev/kmsg: no fault visibility
        try:
            os.lseek(fd, 0, os.SEEK_END)  # only what happens from now on
        except OSError:
            os.close(fd)
            return None
        return cls(fd, bdf)

    def poll(self) -> list[FaultRecord]:
        """Faults logged for the device since the previous poll (non-blocking)."""
        out: list[FaultRecord] = []
        while self.fd >= 0:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue  # records were overwritten before we read them; go on from the oldest
            except OSError:
                break
            if not rec:
                break
            fault = parse_fault_line(kmsg_message(rec))
            if fault is not None and fault.names(self.bdf):
                out.append(fault)
        return out

    def close(self) -> None:
        close_fd_quietly(self.fd)
        self.fd = -1
