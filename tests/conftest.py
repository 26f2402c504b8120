"""Root conftest: registers the lab plugin (lab tests run in the QEMU guest; see lab/README.md)."""

pytest_plugins = ["lab.pytest_lab"]
