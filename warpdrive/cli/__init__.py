"""`warpdrive` command line.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser and
sets `func=<callable(args) -> int>` as a default. To add a subcommand, create the module and list
it in `SUBCOMMAND_MODULES`; names in `OPTIONAL_SUBCOMMAND_MODULES` are picked up once the module
exists. Keep module-level imports light: every module is imported on every invocation.

Exit codes: 0 done (or nothing to do), 1 failed, 2 usage error, 3 refused by a safety check
(nothing was written), 4 permission denied (needs root / device node access).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..errors import BindingRefusedError, GroupNotViableError, PermissionDeniedError, WarpdriveError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_PERMISSION = 4

SUBCOMMAND_MODULES: list[str] = [
    "warpdrive.cli.devices",
    "warpdrive.cli.plugins",
    "warpdrive.cli.bind",
]
OPTIONAL_SUBCOMMAND_MODULES: list[str] = [
    "warpdrive.cli.compress",
    "warpdrive.cli.zip",
    "warpdrive.cli.emu",
    "warpdrive.cli.serve",
]


# Subcommands whose usage errors exit with another status (gzip's exit 2 means "warning").
USAGE_EXIT: dict[str, int] = {}


def exit_code_for(err: WarpdriveError) -> int:
    if isinstance(err, BindingRefusedError | GroupNotViableError):
        return EXIT_REFUSED
    if isinstance(err, PermissionDeniedError):
        return EXIT_PERMISSION
    return EXIT_FAILED


def _load(name: str, optional: bool) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if optional and e.name == name:
            return None  # not written yet; any *other* missing import is a real error
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warpdrive",
        description="User-space driver runtime for Linux accelerators (VFIO, iommufd, uacce, "
        "vfio-user).",
        epilog="exit codes: 0 ok, 1 failed, 2 usage, 3 refused by a safety check (nothing "
        "written), 4 permission denied",
    )
    parser.add_argument("--version", action="version", version=f"warpdrive {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        _load(name, optional=False).register(subparsers)
    for name in OPTIONAL_SUBCOMMAND_MODULES:
        mod = _load(name, optional=True)
        if mod is not None:
            mod.register(subparsers)
    return parser


_fatal_signal = 0  # set when a run ends because of a signal: `entry` then dies by it


def entry() -> None:
    """The console script: `main`, then, if a signal ended the run, die by that signal (after
    cleanup), as gzip does, so a calling shell or make sees what happened."""
    code = main()
    if _fatal_signal:
        import os
        import signal

        signal.signal(_fatal_signal, signal.SIG_DFL)
        os.kill(os.getpid(), _fatal_signal)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    global _fatal_signal
    from .output import Interrupted

    _fatal_signal = 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on usage errors (2)
        code = int(e.code) if isinstance(e.code, int) else EXIT_USAGE
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
        if code == EXIT_USAGE and words and words[0] in USAGE_EXIT:
            return USAGE_EXIT[words[0]]
        return code
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except WarpdriveError as e:
        print(f"warpdrive: {e}", file=sys.stderr)
        return exit_code_for(e)
    except Interrupted as e:
        _fatal_signal = e.signum
        print(f"warpdrive: interrupted by {e}" + (f"; {e.note}" if e.note else ""),
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `warpdrive ... | head`: quiet, and death by SIGPIPE like others
        import os
        import signal

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _fatal_signal = signal.SIGPIPE
        return 128 + signal.SIGPIPE
