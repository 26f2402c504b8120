"""The folder tree is the architecture: `.importlinter` states the layers and the rules between
them (uapi at the bottom, the core, backends beside the plugins and the binding tools, the
emulator beside the faces, the CLI on top; models never see a driver; no cycles at any depth),
and `lint-imports` (import-linter) checks every import, lazy and TYPE_CHECKING ones included.

Here: the real tree keeps every contract, and a copy of it with one deliberately wrong import
breaks the contract that import violates, so the check is known to bite. docs/architecture.md's
layer table must list exactly the layers of the contract.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: install the test extra (`pip install -e '.[test]'`, "
                    "which `make test` does)")
    env = dict(os.environ, PYTHONPATH=str(cwd))  # analyse the `warpdrive` under `cwd`
    return subprocess.run([str(LINT), "--no-logo", "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_layer_contract() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", proc.stdout), proc.stdout


# (file, the import appended to it, what lint-imports must say about it)
INJECTED = [
    pytest.param("warpdrive/devices/edu.py", "from ..backends import open_device",
                 "warpdrive.devices is not allowed to import warpdrive.backends",
                 id="plugin-imports-a-backend"),
    pytest.param("warpdrive/uapi/vfio.py", "from ..device import Device",
                 "warpdrive.uapi is not allowed to import warpdrive.device",
                 id="uapi-imports-the-core"),
    pytest.param("warpdrive/dma.py", "from .devices import registry",
                 "warpdrive.dma is not allowed to import warpdrive.devices",
                 id="core-imports-a-plugin"),
    pytest.param("warpdrive/backends/vfio/legacy.py", "from ...zip import compress",
                 "warpdrive.backends is not allowed to import warpdrive.zip",
                 id="backend-imports-a-face"),
    pytest.param("warpdrive/devices/zip/engine.py", "from ...emu.models import zip",
                 "warpdrive.devices is not allowed to import warpdrive.emu",
                 id="driver-imports-its-model"),
    pytest.param("warpdrive/emu/models/testdev.py", "from ...devices import edu",
                 "warpdrive.emu.models is not allowed to import warpdrive.devices",
                 id="model-imports-a-driver"),
    pytest.param("warpdrive/emu/models/zip.py", "from ..server import VfioUserServer",
                 "warpdrive.emu.models is not allowed to import warpdrive.emu.server",
                 id="model-imports-the-server"),
    pytest.param("warpdrive/devices/zip/lane.py", "from .engine import ZipEngine",
                 "No cycles are allowed in warpdrive.devices.zip",
                 id="cycle-inside-a-package"),
]


@pytest.mark.parametrize(("path", "line", "complaint"), INJECTED)
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, path: str, line: str,
                                          complaint: str) -> None:
    shutil.copytree(ROOT / "warpdrive", tmp_path / "warpdrive",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / path
    target.write_text(target.read_text() + f"\n{line}  # deliberately wrong (test_layers)\n")
    proc = lint(tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())  # the report wraps long lines
    assert proc.returncode != 0, out
    assert complaint in out, out
    assert Path(path).stem in out, out  # it names the importer


def _contract_layers() -> list[list[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    raw = cfg["importlinter:contract:layers"]["layers"]
    return [[m.strip(" ()") for m in re.split(r"[|:]", line)]
            for line in raw.strip().splitlines()]


def test_architecture_doc_lists_the_contract_layers() -> None:
    """docs/architecture.md's generated table (between its markers) names the same layers, top
    to bottom, as the contract."""
    doc = (ROOT / "docs/architecture.md").read_text()
    m = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", doc, re.S)
    assert m, "docs/architecture.md lost its layer table markers"
    rows = [line for line in m.group(1).splitlines() if line.startswith("| ") and "---" not in
            line][1:]  # without the header row
    documented = [sorted(re.findall(r"`([\w.]+)`", row.split("|")[2])) for row in rows]
    assert documented == [sorted(layer) for layer in _contract_layers()]
