"""Guest-side helpers for virtio-crypto in the lab: which function serves the kernel's cbc(aes).

The guest has two virtio-crypto functions: QEMU's (`crypto_bdf`, builtin cryptodev backend) and
warpdrive's model (`crypto_model_bdf`, served over vfio-user). Linux's virtio_crypto registers
one `cbc(aes)` (driver virtio_crypto_aes_cbc) while at least one function is bound and
unregisters it when the last one goes; a registration runs the kernel's self-tests, and a tfm
picks its function at setkey time. So:

- to judge a function with the self-tests, take every function off virtio_crypto, then bind only
  that one (`registered_on`);
- to aim AF_ALG at one function without a new registration, bind it first, then move the others
  to vfio-pci (`kernel_serves`);
- never unbind a function while a tfm may use it (a self-test still running, an open AF_ALG
  socket): Linux 6.12 then WARNs in crypto_unregister_alg (refcount), fails to register again and
  corrupts memory (seen in the lab). `wait_settled` waits until the self-tests are done.

Only for commands and tests that run inside the guest (they rebind functions).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

KERNEL_DRIVER = "virtio_crypto_aes_cbc"
PCI = Path("/sys/bus/pci/devices")
VIRTIO_CRYPTO_DRIVER = Path("/sys/bus/virtio/drivers/virtio_crypto")


def alg_entries(driver: str = KERNEL_DRIVER) -> list[dict[str, str]]:
    """/proc/crypto blocks of `driver` (a larval one while its self-test runs)."""
    out = []
    for block in Path("/proc/crypto").read_text().split("\n\n"):
        fields = dict((k.strip(), v.strip()) for k, _, v in
                      (ln.partition(":") for ln in block.splitlines() if ":" in ln))
        if fields.get("driver") == driver:
            out.append(fields)
    return out


def alg_ready(driver: str = KERNEL_DRIVER) -> bool:
    """Registered, self-tested and passed: one entry, no larval, selftest 'passed'."""
    e = alg_entries(driver)
    return len(e) == 1 and e[0].get("type") == "skcipher" and e[0].get("selftest") == "passed"


def kernel_functions() -> list[str]:
    """PCI addresses of the functions bound to virtio_crypto now."""
    if not VIRTIO_CRYPTO_DRIVER.is_dir():
        return []
    return sorted(os.path.basename(os.path.realpath(p).rsplit("/", 1)[0])
                  for p in VIRTIO_CRYPTO_DRIVER.glob("virtio*"))


def driver_of(bdf: str) -> str | None:
    link = PCI / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def wait_settled(timeout: float = 900.0) -> None:
    """Until the kernel's view is stable: cbc(aes) self-tested and passed while a function is
    on virtio_crypto, or no entry at all when none is."""
    deadline = time.monotonic() + timeout
    while True:
        if (alg_ready() if kernel_functions() else not alg_entries()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"virtio_crypto not settled after {timeout} s: functions "
                               f"{kernel_functions()}, /proc/crypto {alg_entries()}")
        time.sleep(0.2)


@contextmanager
def off_kernel(*bdfs: str) -> Iterator[None]:
    """`bdfs` on vfio-pci for the block (back on virtio-pci after), once the kernel settled."""
    from warpdrive import binding

    with ExitStack() as stack:
        for bdf in bdfs:
            wait_settled()
            stack.enter_context(binding.bound_to(bdf))
        yield
        wait_settled()  # nothing may still use a function when it moves back


@contextmanager
def kernel_serves(bdf: str, others: list[str]) -> Iterator[None]:
    """Only `bdf` on virtio_crypto for the block (it must be bound already; the others move to
    vfio-pci, so cbc(aes) stays registered and is not tested again)."""
    if driver_of(bdf) != "virtio-pci":
        raise RuntimeError(f"{bdf} is on {driver_of(bdf)}, not virtio-pci")
    with off_kernel(*[o for o in others if driver_of(o) == "virtio-pci"]):
        assert kernel_functions() == [bdf], kernel_functions()
        yield


NOSLOWTESTS = Path("/sys/module/cryptomgr/parameters/noslowtests")  # CRYPTO_SELFTESTS_FULL only


@contextmanager
def full_selftests() -> Iterator[bool]:
    """The kernel's slow (fuzzing) self-tests on for the block, where the kernel has them (the
    lab boots 7.3 with them off: lab/vm.py); yields whether they are on. testmgr reads the
    parameter at each test, so a registration inside the block gets the full tests."""
    if not NOSLOWTESTS.exists():
        yield False
        return
    saved = NOSLOWTESTS.read_text().strip()
    NOSLOWTESTS.write_text("0")
    try:
        yield NOSLOWTESTS.read_text().strip() == "N"
    finally:
        NOSLOWTESTS.write_text("1" if saved == "Y" else "0")


@contextmanager
def registered_on(bdf: str, others: list[str],
                  timeout: float = 900.0) -> Iterator[tuple[float, bool]]:
    """cbc(aes) registered again with only `bdf` on virtio_crypto, so the kernel's self-tests
    (the full ones, where the kernel has them) judge `bdf`; yields how long they took and whether
    the slow tests ran. Afterwards the others come back (no new test)."""
    with off_kernel(*[o for o in others if driver_of(o) == "virtio-pci"]):
        with full_selftests() as full:
            with off_kernel(bdf):
                if alg_entries():
                    raise RuntimeError(f"{KERNEL_DRIVER} still registered with no function "
                                       f"bound: {alg_entries()}")
            t0 = time.monotonic()  # bdf is back on virtio-pci: registration and self-tests run
            wait_settled(timeout)
            took = time.monotonic() - t0
        assert kernel_functions() == [bdf], kernel_functions()
        yield took, full


def selftests_enabled(kernel_config: Path) -> bool:
    """Whether the lab kernel runs the crypto self-tests at registration (6.12: the manager's
    tests not disabled; 7.3: CRYPTO_SELFTESTS)."""
    text = kernel_config.read_text()
    return bool(re.search(r"^# CONFIG_CRYPTO_MANAGER_DISABLE_TESTS is not set$", text, re.M)
                or re.search(r"^CONFIG_CRYPTO_SELFTESTS=y$", text, re.M))


def slow_selftests_built(kernel_config: Path) -> bool:
    """Whether the lab kernel has the slow (fuzzing) self-tests (7.3: CRYPTO_SELFTESTS_FULL),
    which its cryptomgr parameter `noslowtests` turns off and on at run time."""
    return bool(re.search(r"^CONFIG_CRYPTO_SELFTESTS_FULL=y$", kernel_config.read_text(), re.M))
