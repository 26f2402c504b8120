"""Run a function in a forked child and get its exit status (fork-guard tests)."""

from __future__ import annotations

import os
from collections.abc import Callable


def run_in_child(fn: Callable[[], int]) -> int:
    """Fork, run `fn` in the child, return its exit status (or -signal if it died of one)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
