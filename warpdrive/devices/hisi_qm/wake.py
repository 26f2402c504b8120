"""Threads sleeping on one wake-up source (`WakeGate`): the EQ interrupt of a QM function, which
every queue of it shares (an eventfd), or one uacce queue's fd that several threads wait on.

Reading the source takes the wake-up: an eventfd read empties its count, and the kernel's poll
of a uacce queue moves its own copy of the CQ head past what it saw. With each sleeper reading
for itself, the first to wake took the event and the others slept out their bound (50 ms) with
their jobs done; a sleeper that looked at its CQ just before another took the event slept on too.

So one sleeper at a time (the leader) reads the source; each read that found an event counts in
`wakeups` and wakes every other sleeper (followers, on a condition variable), who look at their
CQs again. A waiter reads `wakeups` before its last look at its CQ and hands that value (`seen`)
to `block`, which returns at once when a wake-up was taken since. Why no wake-up is lost: a job
the waiter's last look missed completes after that look; the device writes the CQE before it
signals (the MSI's write follows the CQE's, in order, as PCIe posts them; the model writes the
eventfd after its ring writes), so the event is read after the waiter read `seen`. If some other
leader reads it, its count (under the condition's lock) comes after `seen` was read: the waiter
either finds the count moved when it takes the lock, or is waiting on the condition and is woken
by it. Otherwise the event is still in the source when the waiter leads, and its read returns at
once (an eventfd or a uacce fd is readable while its event is unread). A leader that leaves
without an event wakes the followers too, so one of them leads while it has time left; until it
does, nobody reads the source and the event waits there.

One thread alone costs what it did: the leader sleeps in the source exactly as before (no
system call more); the lock is uncontended, and `notify_all` with nobody waiting is a no-op.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ...errors import DeviceTimeoutError


class WakeGate:
    """The sleepers of one wake-up source (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._leading = False
        self.wakeups = 0  # events the leaders read; read it before the last look at the CQ

    def block(self, wait: Callable[[float], object], timeout: float, seen: int | None = None,
              quiet: type[Exception] = DeviceTimeoutError) -> bool:
        """Sleep until a wake-up is taken after `seen` (`wakeups` as the caller read it before
        its last look at its completions; None: as it is now), or for `timeout` seconds.
        `wait(left)` waits on the source and reads its event, raising `quiet` when none came
        (the sleep ends then too); one thread runs it at a time. True when this thread was the
        leader (it ran `wait`)."""
        cond = self._cond
        left = timeout
        deadline = None
        leading = took = False
        # From the election on, the finally hands the lead back: an exception raised as the
        # lock is let go (KeyboardInterrupt lands at such a call) would otherwise leave
        # `_leading` set, and every later sleeper would wait on the gate with nobody reading
        # the source or acknowledging its events.
        try:
            with cond:
                if seen is None:
                    seen = self.wakeups
                while True:
                    if self.wakeups != seen:
                        return False
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                    if not self._leading:
                        self._leading = leading = True
                        break
                    if deadline is None:
                        deadline = time.monotonic() + timeout
                    cond.wait(left)
            try:
                wait(left)
                took = True
            except quiet:
                pass
        finally:
            if leading:
                with cond:
                    self._leading = False
                    if took:
                        self.wakeups += 1
                    cond.notify_all()  # look again, or (no event) one of you leads now
        return True
