"""Naming the IOMMU-group members that keep a group from being viable (pure: GroupMember values
as warpdrive.pci reads them from sysfs; the VFIO_GROUP_GET_STATUS call itself is kernel-facing)."""

from __future__ import annotations

from warpdrive.backends.vfio.group import describe_blockers
from warpdrive.pci import GroupMember


def test_only_host_driver_members_are_named():
    members = (
        GroupMember("0000:01:00.1", "snd_hda_intel", 0x040300),
        GroupMember("0000:01:00.2", "vfio-pci", 0x0C0330),
        GroupMember("0000:01:00.3", None, 0x0C8000),
        GroupMember("0000:00:01.0", "pcieport", 0x060400),
    )
    assert describe_blockers(members) == "0000:01:00.1 (bound to snd_hda_intel)"


def test_no_blockers():
    assert describe_blockers(()) == ""
