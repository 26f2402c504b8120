"""Root conftest: registers the lab plugin (lab tests run in the QEMU guest; see lab/README.md)."""

import os
import sys

# On the host, no test may write PCI binding files (the host NIC is a PCI function carrying the
# default route): warpdrive.binding's one sysfs write function refuses while this is set. Inside
# the lab guest binding is real and allowed.
if os.environ.get("WARPDRIVE_IN_LAB") != "1":
    os.environ["WARPDRIVE_FORBID_SYSFS_WRITES"] = "1"

# Byte-code caching on, for this process and every Python the tests start (CLI runs, model and
# broker processes: several hundred): an environment with PYTHONDONTWRITEBYTECODE set would
# otherwise compile every warpdrive module from source in each of them (~0.3 CPU-s apiece).
# The lab guest mounts the checkout read-only and reads these caches too.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

pytest_plugins = ["lab.pytest_lab"]
