"""RLIMIT_MEMLOCK preflight, run for real in a child process that drops root (and with it
CAP_IPC_LOCK) and lowers its own limit."""

from __future__ import annotations

import os
import resource

import pytest

from warpdrive.errors import MemlockLimitError
from warpdrive.memory import check_memlock, has_cap_ipc_lock, memlock_limit


def test_root_with_cap_ipc_lock_is_not_limited() -> None:
    if not has_cap_ipc_lock():
        pytest.skip("needs CAP_IPC_LOCK")
    check_memlock(1 << 40)  # the kernel would not charge us, so neither do we


def test_memlock_limit_reads_the_soft_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert memlock_limit() == soft


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_unprivileged_pin_over_the_limit_is_refused_with_numbers_and_advice() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
            os.setgid(65534)
            os.setuid(65534)
            assert not has_cap_ipc_lock()
            check_memlock(32 * 1024)  # fits
            try:
                check_memlock(1 << 20)
            except MemlockLimitError as e:
                os.write(w, str(e).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    msg = os.read(r, 4096).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, msg
    assert "RLIMIT_MEMLOCK is 65536 bytes" in msg
    assert "would pin 1048576 bytes" in msg
    assert "ulimit -l" in msg and "CAP_IPC_LOCK" in msg
