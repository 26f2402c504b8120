"""The lab's test matrix, from pytest's own collection: lab tests counted by kernel x IOMMU mode x
backend x plugin (markdown on stdout; --json for one JSON object). Nothing boots.

    .venv/bin/python lab/matrix.py                  # the whole suite (tests/)
    .venv/bin/python lab/matrix.py tests/lab -k zip # any pytest selection

Axes, read from each collected item:
- kernel: its `lab_kernel` parameter (lab/pytest_lab.py parametrizes every lab test by kernel);
- IOMMU mode: one of the kernel VFIO selftests' five modes (`mode` parameter of
  tests/lab/test_lab_iommu_modes.py), or the `iommu_mode` fixture's (`vfio` = legacy group with a
  type1v2 container = vfio_type1v2_iommu, `iommufd` = VFIO cdev + /dev/iommu), or the plugin
  contract's `backend` parameter; "-" when the test opens no DMA space (boot, uAPI, binding...);
- backend: warpdrive's backend that mode runs on (`vfio` = the legacy group API, on /dev/vfio/vfio
  or /dev/iommu; `iommufd` = the cdev);
- plugin: the device plugin whose device the test drives, from the fixture naming its function
  (`zip_bdf`, `crypto_bdf`, `edu_bdf`, ...), the contract's `plugin` parameter, or the test
  module's name (crypto, virtio, zip, broker, edu); "-" for none.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lab.pytest_lab import item_kernel  # noqa: E402

# iommu_mode fixture / contract backend -> (selftest mode name, warpdrive backend)
FIXTURE_MODES = {"vfio": ("vfio_type1v2_iommu", "vfio"), "iommufd": ("iommufd", "iommufd")}
# Test modules whose own fixtures pick the device -> plugin.
MODULE_PLUGINS = (("crypto", "crypto"), ("virtio", "crypto"), ("zip", "zip"), ("broker", "zip"),
                  ("edu", "edu"))
# The fixture that names a plugin's device in the guest -> plugin.
PLUGIN_FIXTURES = {"zip_bdf": "zip", "crypto_bdf": "crypto", "crypto_model_bdf": "crypto",
                   "edu_bdf": "edu"}


def axes(item: pytest.Item) -> tuple[str, str, str, str]:
    cs = getattr(item, "callspec", None)
    params: dict[str, Any] = dict(cs.params) if cs is not None else {}
    mode, backend = "-", "-"
    if "mode" in params:  # the selftests' names; only iommufd's is the cdev
        mode = str(params["mode"])
        backend = "iommufd" if mode == "iommufd" else "vfio"
    for key in ("iommu_mode", "backend"):
        if str(params.get(key)) in FIXTURE_MODES:
            mode, backend = FIXTURE_MODES[str(params[key])]
    plugin = str(params["plugin"]) if "plugin" in params else "-"
    if plugin == "-":
        names = getattr(item, "fixturenames", ())
        plugin = next((p for f, p in PLUGIN_FIXTURES.items() if f in names), "-")
    if plugin == "-":  # a device fixture of the test module's own (e.g. QEMU's or the model's)
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        plugin = next((p for key, p in MODULE_PLUGINS if key in module), "-")
    return item_kernel(item), mode, backend, plugin


class _Collector:
    def __init__(self) -> None:
        self.lab: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self.host = 0
        self.host_contract: list[str] = []  # plugin-backend pairs the contract runs on the host

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            if item.get_closest_marker("lab") is None:
                self.host += 1
                cs = getattr(item, "callspec", None)
                if cs is not None and {"plugin", "backend"} <= set(cs.params):
                    self.host_contract.append(f"{cs.params['plugin']} on {cs.params['backend']}")
            else:
                self.lab[axes(item)] += 1


def collect(args: list[str]) -> _Collector:
    c = _Collector()
    os.environ.setdefault("WARPDRIVE_LAB", "skip")  # collection only: never boot
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", f"--rootdir={ROOT}",
                      *(args or [str(ROOT / "tests")])], plugins=[c])
    if rc not in (0, 5):
        raise SystemExit(f"lab/matrix.py: pytest collection failed (exit {rc})")
    return c


def markdown(c: _Collector) -> str:
    kernels = sorted({k for k, *_ in c.lab})
    rows = sorted({r[1:] for r in c.lab}, key=lambda r: (r[0] == "-", r))
    out = ["| IOMMU mode | backend | plugin | " + " | ".join(f"k{k}" for k in kernels) + " |",
           "|---|---|---|" + "---:|" * len(kernels)]
    for mode, backend, plugin in rows:
        counts = [str(c.lab.get((k, mode, backend, plugin), 0)) for k in kernels]
        out.append(f"| {mode} | {backend} | {plugin} | " + " | ".join(counts) + " |")
    per_kernel = [str(sum(n for (k, *_), n in c.lab.items() if k == kv)) for kv in kernels]
    out.append("| **all lab tests** | | | " + " | ".join(f"**{n}**" for n in per_kernel) + " |")
    modes = sorted({m for _, m, _, _ in c.lab} - {"-"})
    out += ["", f"Lab tests: {sum(c.lab.values())} ({' + '.join(per_kernel)} on kernels "
            f"{', '.join(kernels)}); IOMMU modes covered: {len(modes)} ({', '.join(modes)}); "
            f"host tests: {c.host}, among them the plugin contract for "
            f"{', '.join(sorted(c.host_contract)) or 'no plugin'} (bundled models)."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object instead of markdown")
    ns, rest = ap.parse_known_args(argv)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pytest's own collection listing
        c = collect(rest)
    if ns.json:
        print(json.dumps({"host": c.host, "host_contract": sorted(c.host_contract), "lab": [
            {"kernel": k, "mode": m, "backend": b, "plugin": p, "tests": n}
            for (k, m, b, p), n in sorted(c.lab.items())]}))
    else:
        print(markdown(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
