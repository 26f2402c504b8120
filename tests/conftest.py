"""Root conftest: registers the lab plugin (lab tests run in the QEMU guest; see lab/README.md)."""

import os

# On the host, no test may write PCI binding files (the host NIC is a PCI function carrying the
# default route): warpdrive.binding's one sysfs write function refuses while this is set. Inside
# the lab guest binding is real and allowed.
if os.environ.get("WARPDRIVE_IN_LAB") != "1":
    os.environ["WARPDRIVE_FORBID_SYSFS_WRITES"] = "1"

pytest_plugins = ["lab.pytest_lab"]
