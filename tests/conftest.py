"""Root conftest: registers the lab plugin (lab tests run in the QEMU guest; see lab/README.md)."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# On the host, no test may write PCI binding files (the host NIC is a PCI function carrying the
# default route): warpdrive.binding's one sysfs write function refuses while this is set. Inside
# the lab guest binding is real and allowed.
if os.environ.get("WARPDRIVE_IN_LAB") != "1":
    os.environ["WARPDRIVE_FORBID_SYSFS_WRITES"] = "1"

# Byte-code caching on, for this process and every Python the tests start (CLI runs, model and
# broker processes: several hundred): an environment with PYTHONDONTWRITEBYTECODE set would
# otherwise compile every warpdrive module from source in each of them (~0.3 CPU-s apiece).
# The lab guest mounts the checkout read-only (it keeps the variable) and reads these caches.
if os.environ.get("WARPDRIVE_IN_LAB") != "1":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False

pytest_plugins = ["lab.pytest_lab"]

_LAB_DIR = Path(__file__).resolve().parent / "lab"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Host tests start bundled models (module engines and brokers here; CLI runs and broker
    processes get it through tests/ziputil.cli_env) without a spin window: after each job a
    model would otherwise poll for 20-50 ms, a second busy core through most of the suite,
    while the tests' clients kick a sleeping model anyway. Tests about the spinning path pass
    their own spin. This thread only: the lab's guests, booting in other threads meanwhile,
    keep the default (a guest's driver cannot kick)."""
    if item.get_closest_marker("lab") is not None or _LAB_DIR in Path(str(item.path)).parents:
        yield
        return
    from warpdrive.backends.vfiouser.launcher import model_spin

    with model_spin(0):
        yield
