"""README.md's lab examples (real devices) run as written in the guest, with the devices they
name bound to vfio-pci for the duration."""

from __future__ import annotations

import pytest

from tests.readme_blocks import python_blocks
from warpdrive import binding

pytestmark = pytest.mark.lab

LAB = [(line, code) for where, line, code in python_blocks() if where == "lab"]


@pytest.mark.parametrize("line,code", LAB, ids=[str(line) for line, _ in LAB])
def test_lab_block_runs(line: int, code: str, edu_bdf: str, crypto_bdf: str) -> None:
    names = {"0000:00:01.0": edu_bdf, "0000:00:02.0": crypto_bdf}
    used = [bdf for bdf in names if bdf in code]
    assert used, f"README.md line {line}: names no lab device"
    for bdf in used:
        assert names[bdf] == bdf, f"README.md names {bdf}; in the lab that is {names[bdf]}"
    with binding.bound_to(used[0]):
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
