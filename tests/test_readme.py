"""README.md's Python examples run as written (issue 11: snippets used undefined names). Host
blocks run here, each in a fresh interpreter in an empty directory (the bundled ZIP model stands
in for hardware); lab blocks run in the QEMU guest (tests/lab/test_lab_readme.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme_blocks import python_blocks
from tests.ziputil import cli_env

BLOCKS = python_blocks()


def test_every_python_block_says_where_it_runs() -> None:
    assert BLOCKS
    unmarked = [line for where, line, _ in BLOCKS if where not in ("host", "lab")]
    assert not unmarked, f"README.md python blocks at lines {unmarked} need a readme-test mark"


@pytest.mark.parametrize("line,code", [(line, code) for where, line, code in BLOCKS
                                       if where == "host"], ids=lambda v: str(v)[:12])
def test_host_block_runs(tmp_path: Path, line: int, code: str) -> None:
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"README.md line {line}:\n{r.stderr}"
