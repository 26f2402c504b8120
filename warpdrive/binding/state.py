"""What a function was bound to before warpdrive moved it, so `unbind` can put it back.

Kept under /run/warpdrive/bindings/<bdf>.json (tmpfs: forgotten at reboot, as the binding is).
WARPDRIVE_STATE_DIR overrides the directory. The record is a convenience: without it, `unbind`
clears driver_override and lets the kernel pick the native driver again, which is the right
answer unless someone had set an override of their own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from .. import pci


def state_dir() -> str:
    return os.path.join(os.environ.get("WARPDRIVE_STATE_DIR", "/run/warpdrive"), "bindings")


@dataclass(frozen=True)
class Record:
    bdf: str
    driver: str | None
    driver_override: str | None


def _path(bdf: str, directory: str | None) -> str:
    return os.path.join(directory or state_dir(), f"{pci.normalize_bdf(bdf)}.json")


def load(bdf: str, directory: str | None = None) -> Record | None:
    try:
        with open(_path(bdf, directory)) as f:
            d = json.load(f)
        return Record(d["bdf"], d.get("driver"), d.get("driver_override"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(rec: Record, directory: str | None = None) -> str | None:
    """Write the record; returns a warning instead of raising (the record is not essential)."""
    path = _path(rec.bdf, directory)
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(rec), f)
        os.replace(tmp, path)
    except OSError as e:
        return (f"could not record the previous driver in {path} ({e.strerror}); `unbind` will "
                "let the kernel choose the driver")
    return None


def forget(bdf: str, directory: str | None = None) -> None:
    try:
        os.unlink(_path(bdf, directory))
    except OSError:
        pass
