"""ABI conformance: the ctypes uAPI modules against the kernel headers, as the compiler reads them.

For every module listed in tests/abi/spec.py the test introspects what the module exports (every
ctypes struct/union: sizeof, alignment, offsetof/size/signedness of every field, nested included,
flexible array members; every int/str constant; the function-like macros the spec names), generates
a C program computing the same facts from the real headers, compiles it with gcc, runs it and
compares. No expected number is written by hand anywhere.

It runs against these header sets, and none is optional:
* host: /usr/include (Debian's linux-libc-dev, 6.12 on Debian 12 and 13);
* lab-6.12, lab-7.3: each lab guest kernel's own uAPI headers (lab.kernel.ensure_kernel(version):
  cached; waits for a build already running; a failed build fails the test with the builder's
  reason, never skips it). $WARPDRIVE_LAB_KERNELS limits the lab sets as it limits the guests.

Names the 6.12 headers lack are listed with reasons in spec.NEWER_THAN_HEADERS; the test proves
they are absent from every header set older than the kernel that added them (spec.SINCE), reports
them as a warning, and fails once such a header gains one. Newer header sets that have them are
reported too, until warpdrive defines them.
"""

from __future__ import annotations

import ctypes
import inspect
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/abi helpers
from abi.cprobe import HeaderSet, ProbeError, ProbeResult, probe_presence, run_probe
from abi.introspect import Fact, ModuleFacts, collect, is_ctypes_aggregate
from abi.spec import MODULES, NEWER_DEFINED, NEWER_THAN_HEADERS, ModuleSpec

from lab import kernel as lab_kernel

try:
    LAB_VERSIONS = lab_kernel.selected_versions()
except lab_kernel.KernelBuildError:
    LAB_VERSIONS = lab_kernel.known_versions()  # the lab plugin reports the bad selection
HEADER_SETS = ("host", *(f"lab-{v}" for v in LAB_VERSIONS))


class AbiReport(UserWarning):
    """Things the ABI test reports without failing (names a header version does not have)."""


# -- header sets -----------------------------------------------------------------------------------
def _host_headers() -> HeaderSet:
    try:
        ver = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "linux-libc-dev"],
                             capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        ver = ""
    desc = f"linux-libc-dev {ver}" if ver else "system uAPI headers"
    return HeaderSet("host", Path("/usr/include"), include_flag=False, description=desc,
                     also=(Path("/usr/lib/linux/uapi"),))


def _lab_headers(version: str) -> HeaderSet:
    try:
        path = lab_kernel.ensure_kernel(version) / "headers" / "include"
    except lab_kernel.KernelBuildError as e:
        pytest.fail(f"cannot build the lab kernel {version}: {e}", pytrace=False)
    if not (path / "linux" / "vfio.h").is_file():
        pytest.fail(f"lab kernel headers missing: {path}/linux/vfio.h does not exist "
                    "(the lab kernel dir, from lab.kernel or WARPDRIVE_LAB_KERNEL, has no "
                    "installed uAPI headers)", pytrace=False)
    release_file = path.parent.parent / "release"
    release = release_file.read_text().strip() if release_file.is_file() else "release unknown"
    return HeaderSet(f"lab-{version}", path, include_flag=True,
                     description=f"lab kernel {release}")


_header_sets: dict[str, HeaderSet] = {}


def header_set(name: str, request: pytest.FixtureRequest) -> HeaderSet:
    if name not in _header_sets:
        _header_sets[name] = _host_headers() if name == "host" else \
            _lab_headers(name.removeprefix("lab-"))
    return _header_sets[name]


_collected: dict[str, ModuleFacts] = {}


def module_facts(spec: ModuleSpec) -> ModuleFacts:
    if spec.module not in _collected:
        _collected[spec.module] = collect(spec)
    return _collected[spec.module]


T = TypeVar("T")


def _probe_or_fail(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ProbeError as e:
        msg = str(e)
    pytest.fail(msg, pytrace=False)


# -- the comparison --------------------------------------------------------------------------------
def _fmt(v: int | str) -> str:
    return repr(v) if isinstance(v, str) else f"{v} ({v:#x})" if v >= 0 else str(v)


def _newer_key(fact: Fact) -> str | None:
    """The NEWER_DEFINED entry a fact belongs to (a constant, a struct, or a struct member and
    what lies inside it), or None."""
    parts = fact.symbol.split(" ", 1)[0].split(".")
    for i in range(1, len(parts) + 1):
        key = ".".join(parts[:i]).split("[", 1)[0]
        if key in NEWER_DEFINED:
            return key
    return None


def _for_older_headers(facts: list[Fact], mod: object) -> tuple[list[Fact], set[int]]:
    """The facts as a 6.12-era header set must show them: every NEWER_DEFINED name absent (the
    returned indices), and a struct that grew a newer member sized and aligned as the prefix
    before that member (computed from the Python layout, not written down)."""
    absent = {i for i, f in enumerate(facts) if _newer_key(f) is not None}
    first_new: dict[str, str] = {}
    for key in NEWER_DEFINED:
        struct, _, member = key.partition(".")
        if member and hasattr(mod, struct):
            names = [e[0] for e in getattr(mod, struct)._fields_]
            if struct not in first_new or names.index(member) < names.index(first_new[struct]):
                first_new[struct] = member
    out = list(facts)
    for i, f in enumerate(facts):
        if f.symbol in first_new and f.kind in ("sizeof", "alignof"):
            cls = getattr(mod, f.symbol)
            names = [e[0] for e in cls._fields_]
            prefix = type(f"{f.symbol}_prefix", (ctypes.Structure,),
                          {"_fields_": cls._fields_[:names.index(first_new[f.symbol])]})
            value = ctypes.sizeof(prefix) if f.kind == "sizeof" else ctypes.alignment(prefix)
            out[i] = Fact(f.symbol, f"{f.kind} (before {first_new[f.symbol]})", value, f.c_expr)
    return out, absent


def _compare(facts: list[Fact], result: ProbeResult, hs: HeaderSet, spec: ModuleSpec,
             absent: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    problems = []
    where = f"{', '.join(spec.headers)} in {hs}"
    for i, fact in enumerate(facts):
        if i in absent:
            if i not in result.missing:
                problems.append(f"{fact.symbol} [{fact.kind}]: {where} has it, but it is listed "
                                "as newer than these headers (tests/abi/spec.py NEWER_DEFINED)")
            continue
        if i in result.missing:
            problems.append(f"{fact.symbol} [{fact.kind}]: defined in {spec.module} "
                            f"(python {_fmt(fact.python)}) but not in {where}: "
                            f"gcc: {result.missing[i]}")
            continue
        c = result.values[i]
        if c != fact.python:
            problems.append(f"{fact.symbol} [{fact.kind}]: python {_fmt(fact.python)} != "
                            f"C {_fmt(c)}   (C: {fact.c_expr})")
    return problems


@pytest.mark.parametrize("hs_name", HEADER_SETS)
@pytest.mark.parametrize("spec", MODULES, ids=[m.module for m in MODULES])
def test_uapi_matches_headers(spec: ModuleSpec, hs_name: str,
                              request: pytest.FixtureRequest) -> None:
    hs = header_set(hs_name, request)
    mf = module_facts(spec)
    facts, absent = (mf.facts, set()) if _kernel_of(hs_name) > (6, 12) else \
        _for_older_headers(mf.facts, mf.module)
    result = _probe_or_fail(lambda: run_probe(hs, spec.preamble, spec.headers, facts))
    problems = _compare(facts, result, hs, spec, absent)
    n_fields = sum(1 for f in mf.facts if f.kind == "offsetof")
    n_macros = sum(1 for f in mf.facts if f.kind == "macro")
    print(f"\nABI {spec.module} vs {hs}: {len(mf.facts)} facts = {len(mf.structs)} structs, "
          f"{n_fields} fields, {len(mf.constants)} constants, {n_macros} macro calls; "
          f"{len(result.headers_read)} uAPI headers read; {len(problems)} problems; "
          f"{len(absent)} facts of newer names proven absent")
    if problems:
        pytest.fail(f"{spec.module} does not match {hs}:\n  " + "\n  ".join(problems),
                    pytrace=False)


# -- names the headers are known to lack -----------------------------------------------------------
def _presence_expr(key: str) -> str:
    if "." in key:
        struct, member = key.split(".", 1)
        return f"offsetof(struct {struct}, {member})"
    return key


def _kernel_of(hs_name: str) -> tuple[int, int]:
    """The kernel version a header set comes from (the host's: linux-libc-dev's version)."""
    text = hs_name.removeprefix("lab-") if hs_name != "host" else subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "linux-libc-dev"], capture_output=True,
        text=True).stdout
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@pytest.mark.parametrize("hs_name", HEADER_SETS)
def test_newer_names_absent_from_headers(hs_name: str, request: pytest.FixtureRequest) -> None:
    """6.12-era header sets must still lack every listed name; newer ones (7.3) may have them,
    and are reported so the names get defined (and checked there)."""
    hs = header_set(hs_name, request)
    newer = _kernel_of(hs_name) > (6, 12)
    present: list[str] = []
    by_header: dict[str, dict[str, str]] = {}
    for key, (header, _reason) in NEWER_THAN_HEADERS.items():
        by_header.setdefault(header, {})[key] = _presence_expr(key)
    problems, absent = [], []
    for header, exprs in by_header.items():
        pre = next(m.preamble for m in MODULES if header in m.headers)
        seen = _probe_or_fail(partial(probe_presence, hs, pre, (header,), exprs))
        for key, err in seen.items():
            reason = NEWER_THAN_HEADERS[key][1]
            if err is None and newer:
                present.append(f"{key} ({header}): {reason}")
            elif err is None:
                problems.append(f"{key}: {header} in {hs} now has it ({reason}); define it in "
                                "warpdrive and remove it from tests/abi/spec.py NEWER_THAN_HEADERS")
            elif ("undeclared" in err) == ("." in key) or (
                    "." in key and "has no member named" not in err):
                problems.append(f"{key}: probe failed for an unexpected reason (typo in the list?):"
                                f" {err}")
            else:
                absent.append(f"{key} ({header}): {reason}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    warnings.warn(AbiReport(f"{len(absent)} names are not in {hs} and not defined by warpdrive:\n  "
                            + "\n  ".join(absent)), stacklevel=1)
    if present:
        warnings.warn(AbiReport(f"{len(present)} names are in {hs} but not yet defined by "
                                "warpdrive:\n  " + "\n  ".join(present)), stacklevel=1)


def test_newer_names_not_defined_in_python() -> None:
    """A name no available header has cannot be checked, so warpdrive must not define it."""
    offenders = []
    for key, (header, _reason) in NEWER_THAN_HEADERS.items():
        spec = next(m for m in MODULES if header in m.headers)
        mod = module_facts(spec).module
        if "." in key:
            struct, member = key.split(".", 1)
            cls = getattr(mod, struct)
            if member in {f[0] for f in cls._fields_}:
                offenders.append(f"{spec.module}.{key}")
        elif hasattr(mod, key):
            offenders.append(f"{spec.module}.{key}")
    assert not offenders, f"defined without a header to check them against: {offenders}"


# -- nothing escapes the comparison ----------------------------------------------------------------
@pytest.mark.parametrize("spec", MODULES, ids=[m.module for m in MODULES])
def test_all_lists_every_uapi_name(spec: ModuleSpec) -> None:
    """Public structs and UPPER_CASE constants must be in __all__ (which is what gets compared);
    private unions must be reachable from a public struct (which is how they get compared)."""
    mf = module_facts(spec)
    mod = mf.module
    exported = set(mod.__all__)
    unlisted, orphans = [], []
    reachable: set[type] = set()

    def walk(cls: type) -> None:
        for entry in cls._fields_:  # type: ignore[attr-defined]
            t = entry[1]
            while issubclass(t, ctypes.Array):
                t = t._type_
            if is_ctypes_aggregate(t) and t not in reachable:
                reachable.add(t)
                walk(t)

    for cls in mf.structs:
        walk(cls)
    for name, obj in vars(mod).items():
        # (TYPE_CHECKING: the typing idiom, `= False` where importing typing is avoided)
        if name.startswith("__") or name == "TYPE_CHECKING" or inspect.ismodule(obj):
            continue
        if is_ctypes_aggregate(obj) and obj.__module__ == mod.__name__:
            if name.startswith("_"):
                if obj not in reachable:
                    orphans.append(name)
            elif name not in exported:
                unlisted.append(name)
        elif (isinstance(obj, int | str) or inspect.isfunction(obj)) and name[0].isupper() \
                and name not in exported:
            unlisted.append(name)
    untested = [f for f in mf.functions
                if spec.module != "warpdrive.uapi.ioctl"  # has its own test below
                and not any(call.startswith(f + "(") for call, _ in spec.func_macros)]
    assert not untested, f"{spec.module}: functions mirroring C macros with no probe: {untested}"
    assert not unlisted, f"{spec.module}: public uAPI names missing from __all__: {unlisted}"
    assert not orphans, f"{spec.module}: private ctypes types used by no public struct: {orphans}"


# -- the ioctl encoders themselves (host headers) --------------------------------------------------
def test_ioctl_encoders_match_c_macros(request: pytest.FixtureRequest) -> None:
    """warpdrive.uapi.ioctl against <linux/ioctl.h>'s macros, evaluated by the compiler."""
    from warpdrive.uapi import ioctl as io
    from warpdrive.uapi.hisi_qm import hisi_qp_ctx, hisi_qp_info

    cases: list[tuple[str, int, str]] = [
        ("_IO(';', 100)", io._IO(";", 100), "_IO(';', 100)"),
        ("_IO(0x57, 1)", io._IO(0x57, 1), "_IO(0x57, 1)"),
        ("_IOR('T', 0x30, c_uint)", io._IOR("T", 0x30, ctypes.c_uint), "_IOR('T', 0x30, unsigned)"),
        ("_IOW('T', 0x31, c_int)", io._IOW("T", 0x31, ctypes.c_int), "_IOW('T', 0x31, int)"),
        ("_IOWR('H', 10, hisi_qp_ctx)", io._IOWR("H", 10, hisi_qp_ctx),
         "_IOWR('H', 10, struct hisi_qp_ctx)"),
        ("_IOWR('H', 11, hisi_qp_info)", io._IOWR("H", 11, hisi_qp_info),
         "_IOWR('H', 11, struct hisi_qp_info)"),
        ("_IOR(0xff, 0xff, 0x3fff)", io._IOR(0xFF, 0xFF, 0x3FFF), "_IOR(0xff, 0xff, char[0x3fff])"),
        ("_IOC(3, 0x80, 0x7f, 0x1000)", io._IOC(3, 0x80, 0x7F, 0x1000),
         "_IOC(3U, 0x80, 0x7f, 0x1000)"),
    ]
    for word in (0xC004480A, 0x80043B30, 0xFFFFFFFF):
        for fn in ("_IOC_DIR", "_IOC_TYPE", "_IOC_NR", "_IOC_SIZE"):
            cases.append((f"{fn}({word:#x})", getattr(io, fn)(word), f"{fn}({word:#x}U)"))
    facts = [Fact(label, "macro", value, c_expr) for label, value, c_expr in cases]
    hs = header_set("host", request)
    spec = ModuleSpec("warpdrive.uapi.ioctl", ("linux/ioctl.h", "misc/uacce/hisi_qm.h"))
    result = _probe_or_fail(lambda: run_probe(hs, (), spec.headers, facts))
    problems = _compare(facts, result, hs, spec)
    if problems:
        pytest.fail("ioctl encoders differ from <linux/ioctl.h>:\n  " + "\n  ".join(problems),
                    pytrace=False)
