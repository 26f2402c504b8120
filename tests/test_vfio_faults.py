"""Recognising IOMMU fault lines in the kernel log.

The lines are built from the kernel's own format strings (drivers/iommu/intel/dmar.c
dmar_fault_do_one, drivers/iommu/amd/iommu.c amd_iommu_report_page_fault, Linux 6.12). That the
real guest kernel prints them for a blocked edu DMA is checked in tests/lab/test_lab_edu.py.
"""

from __future__ import annotations

from warpdrive.backends.vfiodev.faults import kmsg_message, parse_fault_line

VTD_FMT = ("DMAR: [{kind} NO_PASID] Request device [{bus:02x}:{dev:02x}.{fn}] fault addr "
           "0x{addr:x} [fault reason 0x{reason:02x}] {text}")


def test_vtd_read_fault():
    line = VTD_FMT.format(kind="DMA Read", bus=0, dev=3, fn=0, addr=0x7000, reason=6,
                          text="PTE Read access is not set")
    f = parse_fault_line(line)
    assert f is not None
    assert (f.requester, f.access, f.address) == ("00:03.0", "read", 0x7000)
    assert "0x06" in f.reason and "PTE Read" in f.reason
    assert f.names("0000:00:03.0") and not f.names("0000:00:04.0")
    assert "00:03.0" in str(f)


def test_vtd_fault_with_pci_domain_as_linux_7_prints_it():
    # Linux 7.3's dmar_fault_do_one names the requester with its domain (seen in the lab guest).
    line = ("DMAR: [DMA Read NO_PASID] Request device [0000:00:01.0] fault addr 0x11000 "
            "[fault reason 0x06] PTE Read access is not set")
    f = parse_fault_line(line)
    assert f is not None
    assert (f.requester, f.access, f.address) == ("0000:00:01.0", "read", 0x11000)
    assert f.names("0000:00:01.0") and not f.names("0000:00:03.0")
    assert not f.names("0001:00:01.0")  # the domain now tells segments apart
    w = parse_fault_line("DMAR: [DMA Write PASID 0x1] Request device [0001:0a:1f.7] fault addr "
                         "0xdead000 [fault reason 0x05] PTE Write access is not set")
    assert w is not None and w.access == "write" and w.names("0001:0a:1f.7")
    assert not w.names("0000:0a:1f.7")


def test_vtd_write_fault_with_pasid():
    line = ("DMAR: [DMA Write PASID 0x1] Request device [0a:1f.7] fault addr 0xdead000 "
            "[fault reason 0x05] PTE Write access is not set")
    f = parse_fault_line(line)
    assert f is not None and f.access == "write" and f.requester == "0a:1f.7"
    assert f.names("0000:0a:1f.7")


def test_amd_fault_both_forms():
    a = parse_fault_line("AMD-Vi: Event logged [IO_PAGE_FAULT device=0000:00:03.0 domain=0x0002 "
                         "address=0x10000 flags=0x0020]")
    assert a is not None and a.access == "write" and a.names("0000:00:03.0")
    b = parse_fault_line("vfio-pci 0000:00:03.0: AMD-Vi: Event logged [IO_PAGE_FAULT "
                         "domain=0x0002 address=0x10000 flags=0x0000]")
    assert b is not None and b.access == "read" and b.names("0000:00:03.0")


def test_other_lines_are_not_faults():
    for line in ("DMAR: DRHD: handling fault status reg 2",
                 "DMAR: [INTR-REMAP] Request device [00:03.0] fault index 0x10 "
                 "[fault reason 0x25] Blocked a compatibility format interrupt request",
                 "vfio-pci 0000:00:03.0: enabling device (0000 -> 0002)"):
        assert parse_fault_line(line) is None


def test_kmsg_record_framing():
    rec = (b"3,1234,5678901,-;DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr "
           b"0x1000 [fault reason 0x06] PTE Read access is not set\n SUBSYSTEM=pci\n")
    msg = kmsg_message(rec)
    assert msg.startswith("DMAR: [DMA Read")
    assert parse_fault_line(msg) is not None
