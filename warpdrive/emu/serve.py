"""Command-line serving of a device model: shared by `python -m warpdrive.emu` and `warpdrive emu`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from .. import syscalls as sc
from ..errors import InvalidArgumentError, PermissionDeniedError, UsageError, WarpdriveError
from ..logs import stderr_handler


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="device model to serve (see --list)")
    parser.add_argument("--socket", metavar="PATH",
                        help="UNIX socket to listen on (must not exist)")
    parser.add_argument("--set", dest="options", metavar="KEY=VALUE", action="append", default=[],
                        help="model option (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the bundled models and exit")
    parser.add_argument("--exit-on-disconnect", action="store_true",
                        help="exit when the first client disconnects (default: serve the next)")
    parser.add_argument("--accept-timeout", type=float, metavar="SECONDS",
                        help="exit if no client connects within this time")
    parser.add_argument("--spin-us", type=float, metavar="US",
                        help="keep polling doorbells this long after the last activity")
    parser.add_argument("--idle-us", type=float, metavar="US",
                        help="when idle, poll doorbells at least this often")
    parser.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="close a connection that has not negotiated VERSION by then "
                        "(default %(default)s)")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # launcher handshake
    # The launcher's private directory (socket + log): if the launcher is gone when we exit
    # (killed, or it left without stopping us), nobody else will remove it.
    parser.add_argument("--private-dir", help=argparse.SUPPRESS)
    # Who that launcher is: a launcher gone before we looked (the CLI starts its model ahead and
    # may exit or be killed within milliseconds) leaves us another parent from the start.
    parser.add_argument("--launcher-pid", type=int, help=argparse.SUPPRESS)


def configure_logging(level: int = logging.INFO) -> None:
    """Server logs (connections, refusals, model messages) as lines on stderr."""
    root = logging.getLogger("warpdrive")
    if not root.handlers:
        root.addHandler(stderr_handler("%(asctime)s %(message)s", "%H:%M:%S"))
    root.setLevel(level)


def parse_options(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"model option {pair!r} is not KEY=VALUE", hint="e.g. --set queues=4")
        out[key] = value
    return out


def run_serve(args: argparse.Namespace) -> int:
    from .registry import available_models, load_model

    if args.list:
        for name in available_models():
            print(name)
        return 0
    if not args.model or not args.socket:
        raise UsageError("give a model name and --socket PATH",
                         hint=f"models: {', '.join(available_models())}")
    for flag, value in (("--accept-timeout", args.accept_timeout), ("--spin-us", args.spin_us),
                        ("--idle-us", args.idle_us),
                        ("--handshake-timeout", args.handshake_timeout)):
        positive(flag, value, zero_ok=flag == "--spin-us")
    from .server import VfioUserServer, check_socket_path

    path = os.path.abspath(args.socket)
    try:
        check_socket_path(path)
    except OSError as e:
        raise listen_error(e, f"serving model {args.model}") from None
    cls = load_model(args.model)
    try:
        model = cls(**parse_options(args.options))
    except InvalidArgumentError as e:  # a --set the model refuses: usage, with its hint
        raise UsageError(e.what, errno=e.errno, hint=e.hint) from None
    except WarpdriveError:
        raise  # the model's own refusal, with its hint
    except (TypeError, ValueError) as e:
        raise UsageError(f"model {args.model}: {e}") from None

    configure_logging()
    sc.keep_heap()  # a serving process: its jobs' zlib set-up must not go back to the kernel
    launcher = args.launcher_pid or os.getppid()
    try:
        try:
            server = VfioUserServer(
                model, path, exit_on_disconnect=args.exit_on_disconnect,
                accept_timeout=args.accept_timeout,
                spin_s=None if args.spin_us is None else args.spin_us / 1e6,
                idle_s=None if args.idle_us is None else args.idle_us / 1e6,
                handshake_timeout=args.handshake_timeout, ready_fd=args.ready_fd)
        except InvalidArgumentError as e:  # the model checks some --set values at its reset
            raise UsageError(e.what, errno=e.errno, hint=e.hint) from None
        server.serve_forever()
    except OSError as e:
        raise listen_error(e, f"serving model {args.model} on {path}") from None
    finally:
        if args.private_dir and _gone(launcher):
            remove_private_dir(args.private_dir)
    return 0


def positive(flag: str, value: float | None, *, zero_ok: bool = False) -> None:
    """A command-line number that must be > 0 (>= 0 with `zero_ok`); None: not given."""
    if value is not None and not (value >= 0 if zero_ok else value > 0):
        raise UsageError(f"{flag} {value:g}: give a number {'>= 0' if zero_ok else '> 0'}")


# What to do about each way listening on a socket path fails.
_LISTEN_HINTS = {
    errno.ENOENT: "create the directory first (mkdir -p), or choose another --socket",
    errno.ENOTDIR: "choose a --socket inside a directory",
    errno.EEXIST: "remove it yourself if it is not needed, or choose another --socket",
    errno.EADDRINUSE: "stop that server first, or choose another --socket",
    errno.ENAMETOOLONG: "choose a shorter --socket path",
    errno.EACCES: "run as root, or choose a --socket in a directory this user may write "
    "(e.g. $XDG_RUNTIME_DIR)",
}
_LISTEN_HINTS[errno.EPERM] = _LISTEN_HINTS[errno.EACCES]


def listen_error(e: OSError, what: str) -> WarpdriveError:
    """One line for a server's OSError: the server's own account of a socket path that cannot
    be used (without its strerror twice), and what to do; EACCES/EPERM as permission errors
    (the CLI's exit 4)."""
    text = str(e.strerror or e)
    if e.errno is not None:
        text = text.removesuffix(f": {os.strerror(e.errno)}")
    listening = text.startswith("cannot listen on ")
    msg = text if listening else f"{what}: {text}"
    hint = _LISTEN_HINTS.get(e.errno or 0) if listening else None
    cls = PermissionDeniedError if e.errno in (errno.EACCES, errno.EPERM) else WarpdriveError
    return cls(msg, errno=e.errno, hint=hint)


_PF_EXITING = 0x4  # include/linux/sched.h: the task is in do_exit()


def _gone(pid: int) -> bool:
    """The process exited or is exiting (its fds close before it becomes a zombie, so seeing
    our client's socket close can come before the zombie state)."""
    if os.getppid() != pid:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in (b"Z", b"X", b"x") or bool(int(fields[6]) & _PF_EXITING)


PRIVATE_FILES = ("model.sock", "model.log")  # what the launcher puts in its private directory


def remove_private_dir(path: str) -> None:
    """Remove the launcher's files and then its directory; anything else keeps it in place."""
    for name in PRIVATE_FILES:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
        except OSError:
            return
    try:
        os.rmdir(path)
    except OSError:
        pass


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own asks shutil for the terminal width, and importing shutil imports bz2
    and lzma: ~5 ms of every model's boot, since add_argument builds a formatter to check each
    metavar. The same width, found as shutil does (COLUMNS, then the terminal, then 80)."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        super().__init__(prog, width=(columns or 80) - 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warpdrive.emu",
                                     description="Serve a device model over vfio-user.",
                                     formatter_class=_HelpFormatter)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except WarpdriveError as e:
        print(f"warpdrive emu: {e}", file=sys.stderr)
        return 2 if isinstance(e, InvalidArgumentError) else 1
    except KeyboardInterrupt:
        return 130
