"""`python -m warpdrive ...`: the `warpdrive` command (the console script's entry point)."""

from .cli import entry

entry()
