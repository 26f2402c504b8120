"""Run CPython's own tests of a module against warpdrive (the API's own tests are the judge).

`load(name)` imports the interpreter's `test.<name>` (Debian ships it in
libpythonX.Y-testsuite; `lab/install-deps.sh` installs it for the system Python), points the
module's global for the stdlib module at a shim, and returns TestCase subclasses for pytest to
collect, each listed expected failure marked strict with its reason (an unexpected pass fails).
A Python without the `test` package gets one failing test that says so: never a silent pass.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
import unittest
from collections.abc import Callable
from typing import Any

import pytest


def shim_module(name: str, real: types.ModuleType, ours: dict[str, Any]) -> types.ModuleType:
    """A module that is `real` with `ours` in place of the same names."""
    mod = types.ModuleType(f"{name}_on_warpdrive")
    mod.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    mod.__dict__.update(ours)
    return mod


def load(test_module: str, global_name: str, shim: types.ModuleType,
         expected_failures: dict[str, str], leave_out: dict[str, str],
         namespace: dict[str, Any]) -> None:
    """Fill `namespace` (a test module's globals) with the TestCases of `test.<test_module>`
    running on `shim`. `expected_failures` maps "Class.test_method" to the reason;
    `leave_out` maps "Class" to why the whole class does not apply (it is not collected)."""
    try:
        mod = importlib.import_module(f"test.{test_module}")
    except ImportError as e:
        pkg = f"libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite"
        why = str(e)

        def test_cpython_tests_are_installed() -> None:
            pytest.fail(f"CPython's own tests are missing from {sys.executable} ({why}): the "
                        f"judge of this API cannot run. Install them (Debian: apt-get install "
                        f"{pkg}; lab/install-deps.sh does) or use a Python that ships the "
                        f"'test' package.")

        namespace["test_cpython_tests_are_installed"] = test_cpython_tests_are_installed
        return
    setattr(mod, global_name, shim)
    seen: set[str] = set()
    for cname, cls in sorted(vars(mod).items()):
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)) or \
                cls.__module__ != mod.__name__ or cname in leave_out:
            continue
        overrides: dict[str, Any] = {}
        for key, reason in expected_failures.items():
            c, _, meth = key.partition(".")
            if c == cname and hasattr(cls, meth):
                overrides[meth] = _xfail(getattr(cls, meth), reason)
                seen.add(key)
        namespace[f"Test_{cname}"] = type(f"Test_{cname}", (cls,), overrides)
    unknown = set(expected_failures) - seen
    assert not unknown, f"expected failures that name no test: {sorted(unknown)}"


def _xfail(meth: Callable[..., Any], reason: str) -> Any:
    @functools.wraps(meth)
    def wrapper(self: unittest.TestCase, *a: Any, **kw: Any) -> Any:
        return meth(self, *a, **kw)

    return pytest.mark.xfail(strict=True, reason=reason)(wrapper)


def model_jobs() -> int:
    """Jobs the bundled model behind warpdrive.zip's default engine has completed (its BAR0
    introspection window), to show the judged calls really reach the engine."""
    import warpdrive.zip as wz
    from warpdrive.emu.models.zip import DBG_BAR, DBG_SIZE, decode_stats

    dev = wz.default_engine().source.dev  # type: ignore[attr-defined]
    return decode_stats(dev.region_read(DBG_BAR, 0, DBG_SIZE))["jobs"]
