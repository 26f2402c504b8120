"""Fork safety: contexts opened by a parent are dead in a forked child.

A child inherits the parent's fds and (without MADV_DONTFORK) copy-on-write copies of its DMA
buffers; the device keeps writing the parent's pages, so a child that touched its copies would see
stale data or, worse, submit work on queues the parent owns. Every runtime object that owns kernel
state registers here; after fork, the child's copies are marked dead (any use raises
`ForkedContextError`) and the child's references to the parent's fds are closed, so the device is
released when the parent closes it. DMA buffers and MMIO maps carry MADV_DONTFORK, so they are not
even present in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

from .errors import ForkedContextError

_live: weakref.WeakSet[ForkSafe] = weakref.WeakSet()
_lock = threading.Lock()


class ForkSafe:
    """Mixin for objects that own fds, DMA maps or MMIO maps.

    Subclasses call `_fork_register()` once set up, `_check_alive()` on every public entry point
    that is not on the per-job hot path, and implement `_fork_invalidate()` to drop (in the child
    only) whatever must not be used there: close fds, swap hot-path objects for dead ones."""

    _owner_pid: int
    _forked_dead: bool = False

    def _fork_register(self) -> None:
        self._owner_pid = os.getpid()
        with _lock:
            _live.add(self)

    def _fork_unregister(self) -> None:
        with _lock:
            _live.discard(self)

    def _check_alive(self) -> None:
        if self._forked_dead:
            raise ForkedContextError(
                f"{self._fork_describe()} belongs to process {self._owner_pid}; this forked child "
                f"(pid {os.getpid()}) cannot use it: its DMA buffers and doorbells are not mapped "
                "here and its queues belong to the parent",
                hint="open the device again in the child (after the parent releases it), or start "
                "workers with multiprocessing's 'spawn' or 'forkserver' method",
            )

    def _fork_describe(self) -> str:
        return type(self).__name__

    def _fork_invalidate(self) -> None:
        """Child side: release the child's references. Must not touch the device."""


def _after_fork_in_child() -> None:
    with _lock:
        objs = list(_live)
    for obj in objs:
        obj._forked_dead = True
        try:
            obj._fork_invalidate()
        except Exception:  # a failing cleanup must not break the child
            pass


def close_fd_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class DeadAccessor:
    """Stands in for a hot-path object (doorbell, MMIO window) in a forked child: any attribute
    access raises `ForkedContextError`, so the per-job path needs no pid check of its own."""

    def __init__(self, describe: Callable[[], str], owner_pid: int) -> None:
        object.__setattr__(self, "_describe", describe)
        object.__setattr__(self, "_owner", owner_pid)

    def _raise(self) -> None:
        describe: Callable[[], str] = object.__getattribute__(self, "_describe")
        raise ForkedContextError(
            f"{describe()} belongs to process {self._owner}; this forked child "
            f"(pid {os.getpid()}) cannot use it",
            hint="open the device again in the child, or use multiprocessing's 'spawn' method",
        )

    def __getattr__(self, name: str) -> object:
        self._raise()
        return None

    def __setattr__(self, name: str, value: object) -> None:
        self._raise()


os.register_at_fork(after_in_child=_after_fork_in_child)
