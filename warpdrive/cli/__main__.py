"""`python -m warpdrive.cli ...` (same as the `warpdrive` console script)."""

from . import entry

entry()
