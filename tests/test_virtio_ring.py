"""Host tests of the virtio transport's pure parts: split-ring layout and status names."""

from __future__ import annotations

import pytest

from warpdrive import syscalls as sc
from warpdrive.devices.virtio.pci import status_names
from warpdrive.devices.virtio.virtqueue import ring_layout


@pytest.mark.parametrize("size", [1, 2, 16, 256, 1024, 32768])
def test_ring_layout_alignment(size: int) -> None:
    avail, used, used_bytes, total = ring_layout(size)
    assert avail == 16 * size  # descriptors first, 16-byte aligned
    assert avail % 2 == 0
    assert used % sc.PAGE_SIZE == 0  # own page: no line shared with the driver's stores
    assert used >= avail + 6 + 2 * size
    assert used_bytes == 6 + 8 * size
    assert total % sc.PAGE_SIZE == 0 and total >= used + used_bytes


def test_status_names() -> None:
    assert status_names(0) == "0"
    assert status_names(1 | 2 | 8 | 4) == "ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK"
    assert status_names(0x40) == "NEEDS_RESET"
