"""The package as users meet it: `python -m warpdrive`, `warpdrive --version`, the `py.typed`
marker (shipped as package data, so type checkers use our hints), `warpdrive plugins`."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import warpdrive

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warpdrive", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_python_dash_m_is_the_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0 and "usage: warpdrive" in proc.stdout
    assert run().returncode == 2  # no subcommand: usage, as the console script


def test_version_is_the_package_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"warpdrive {warpdrive.__version__}"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: warpdrive.__version__"  # one place


def test_py_typed_marker_ships() -> None:
    assert (resources.files("warpdrive") / "py.typed").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "py.typed" in cfg["options.package_data"]["warpdrive"]


def test_plugins_command_lists_the_registry() -> None:
    proc = run("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by = {p["name"]: p for p in data["plugins"]}
    assert by["edu"]["ids"] == ["1234:11e8"] and by["edu"]["backends"] == ["vfio", "iommufd"]
    assert by["zip"]["driver"] == "warpdrive.devices.zip.driver:ZipDriver"
    assert data["entry_point_errors"] == []
    table = run("plugins")
    assert table.returncode == 0 and table.stdout.startswith("PLUGIN")
