"""`warpdrive` command line.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its parser and
sets `func=<callable(args) -> int>` as a default. To add a subcommand, create the module, list it
in `SUBCOMMAND_MODULES` and name its commands in `COMMANDS`; names in `OPTIONAL_SUBCOMMAND_MODULES`
are picked up once the module exists. A run naming a command imports only that command's module
(`--version` none, `--help` or an unknown command all of them), so keep module-level imports light.

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
from ..errors import (
    BindingRefusedError,
    GroupNotViableError,
    PermissionDeniedError,
    UsageError,
    WarpdriveError,
)

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

# The module that registers each command. A run of one command imports only its module: in the
# TCG lab guest every module imported costs tens of milliseconds, and the lab runs the CLI often.
COMMANDS: dict[str, str] = {
    "devices": "warpdrive.cli.devices",
    "plugins": "warpdrive.cli.plugins",
    "bind": "warpdrive.cli.bind",
    "unbind": "warpdrive.cli.bind",
    "compress": "warpdrive.cli.zip",
    "decompress": "warpdrive.cli.zip",
    "emu": "warpdrive.cli.emu",
    "serve": "warpdrive.cli.serve",
}


# Commands that use the bundled device model when no hardware is bound: `main` starts it before
# importing the command's module, whose imports (logging, dataclasses, the output layer: ~30 ms)
# then overlap the model's boot. The command itself decides (`warpdrive.cli.zip`'s
# `prestart_model` keeps or drops the model), so a wrong guess costs a model start, nothing else.
EARLY_MODEL: dict[str, str] = {"compress": "zip", "decompress": "zip"}


def _early_model(argv: Sequence[str]) -> None:
    import os

    words = [w for w in argv if not w.startswith("-")]
    if not words or words[0] not in EARLY_MODEL or os.environ.get("WARPDRIVE_DEVICE"):
        return
    for w in argv:
        # --device, --list, --help (or any prefix argparse would take for them), -l or -h in
        # a cluster: the command will not use the model or not run at all.
        if w == "--":
            break
        if w.startswith("--"):
            if w.startswith(("--de", "--l", "--h")) and not w.startswith("--dec"):
                return
        elif w.startswith("-") and ("l" in w or "h" in w):
            return
    from ..backends import nothing_bound

    if nothing_bound():
        from ..backends.vfiouser import launcher

        launcher.prestart(EARLY_MODEL[words[0]])


# Subcommands whose usage errors exit with another status (gzip's exit 2 means "warning").
USAGE_EXIT: dict[str, int] = {}


class Interrupted(BaseException):
    """A terminating signal arrived; raised on the main thread so cleanup runs.
    A BaseException so no `except Exception` on the way swallows it. Defined here, not in
    `output` (which raises it), so `main` can catch it without importing `output` for every
    command."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.note = ""  # what the interrupted command left (or did not leave) behind
        super().__init__(signal.Signals(signum).name)


def exit_code_for(err: WarpdriveError) -> int:
    if isinstance(err, UsageError):
        return EXIT_USAGE
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


def _modules_for(argv: Sequence[str] | None) -> list[tuple[str, bool]]:
    """(module, optional) for the commands this command line can reach: the named command's
    module; none for a bare `--version`; all of them otherwise (help, usage errors)."""
    everything = [(m, False) for m in SUBCOMMAND_MODULES]
    everything += [(m, True) for m in OPTIONAL_SUBCOMMAND_MODULES]
    if argv is None:
        return everything
    for word in argv:
        if word in ("-h", "--help"):
            return everything
        if word == "--version":
            return []
        if not word.startswith("-"):
            # The first word is the command: no top-level option takes a value.
            return [(COMMANDS[word], False)] if word in COMMANDS else everything
    return everything


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, with only the subcommands it can reach."""
    parser = argparse.ArgumentParser(
        prog="warpdrive",
        description="User-space driver runtime for Linux accelerators (VFIO, iommufd, uacce, "
        "vfio-user).",
        epilog="exit codes: 0 ok, 1 failed, 2 usage, 3 refused by a safety check (nothing "
        "written), 4 permission denied",
    )
    parser.add_argument("--version", action="version", version=f"warpdrive {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, optional in _modules_for(argv):
        mod = _load(name, optional=optional)
        if mod is not None:
            mod.register(subparsers)
    return parser


def _command_parser(parser: argparse.ArgumentParser,
                    args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's parser of this run, else the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get(getattr(args, "command", None) or "")
            if isinstance(sub, argparse.ArgumentParser):
                return sub
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
    from ..syscalls import exit_now

    exit_now(code)  # whoever runs the command waits for its exit, not for freeing its modules


def main(argv: Sequence[str] | None = None) -> int:
    global _fatal_signal
    _fatal_signal = 0
    if argv is None:  # the console script: a real run, not a caller's test of `main`
        _early_model(sys.argv[1:])
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            # argparse reports these with the top-level usage; the command's own is the one
            # that lists the options the user could have meant.
            _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
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
