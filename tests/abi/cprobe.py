"""Generate a C program printing what the compiler computes from the real headers; build, run it.

One fact per source line: a compile error is mapped back to the fact on that line (so a name the
header lacks is reported by name with the compiler's own message), the failing lines are dropped,
and the rest is compiled again so one missing name never hides the other comparisons.

A `HeaderSet` is where the uAPI headers come from. After every build the compiler's dependency list
is checked: each uAPI header (`linux/`, `asm/`, `asm-generic/`, `misc/`) must have been read from
that set's root, so a header missing from a set cannot silently fall back to another one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .introspect import Fact

UAPI_DIRS = {"linux", "asm", "asm-generic", "misc"}


@dataclass(frozen=True)
class HeaderSet:
    name: str  # "host" or "lab"
    root: Path  # directory holding linux/vfio.h etc.
    include_flag: bool  # pass -I root (the host set is the compiler's default /usr/include)
    description: str
    # further directories the set's own headers may be read from (Debian's linux-libc-dev keeps
    # the arch asm/ headers in /usr/lib/linux/uapi/<arch>/asm, linked from /usr/include/<triplet>)
    also: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return f"{self.name} headers ({self.description}, {self.root})"


@dataclass
class ProbeResult:
    values: dict[int, int | str]  # fact index -> C value
    missing: dict[int, str]  # fact index -> compiler message (the header lacks it)
    headers_read: list[Path]


class ProbeError(AssertionError):
    pass


def _cc() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise ProbeError("no C compiler (gcc) on PATH: the ABI test needs one to read the headers; "
                         "install it with `apt-get install gcc`")
    return cc


def _line_for(i: int, fact: Fact) -> str:
    if isinstance(fact.python, str):
        return f'    printf("%d s %s\\n", {i}, (const char *)({fact.c_expr}));'
    return f"    PV({i}, {fact.c_expr});"


def _source(preamble: tuple[str, ...], headers: tuple[str, ...], facts: dict[int, Fact]
            ) -> tuple[str, dict[int, int]]:
    head = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/types.h>",
        *preamble,
        *(f"#include <{h}>" for h in headers),
        "static void pv(int id, long long s, unsigned long long u, int negative)",
        "{",
        '    if (negative) printf("%d i %lld\\n", id, s);',
        '    else printf("%d i %llu\\n", id, u);',
        "}",
        "#define PV(id, e) pv((id), (long long)(e), (unsigned long long)(e), (e) < 0)",
        "int main(void)",
        "{",
    ]
    lines = list(head)
    line_to_fact: dict[int, int] = {}
    for i, fact in facts.items():
        lines.append(_line_for(i, fact))
        line_to_fact[len(lines)] = i  # 1-based line number of the line just added
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines), line_to_fact


_ERR = re.compile(r"^probe\.c:(\d+):\d+: error: (.*)$", re.M)


def _compile(cc: str, hs: HeaderSet, src: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    (workdir / "probe.c").write_text(src)
    cmd = [cc, "-std=gnu11", "-Wall", "-fmax-errors=0", "-MD", "-MF", "probe.d"]
    if hs.include_flag:
        cmd += ["-I", str(hs.root)]
    cmd += ["-o", "probe", "probe.c"]
    env = dict(os.environ, LC_ALL="C")  # plain ASCII quotes in diagnostics
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)


def _deps(workdir: Path) -> list[Path]:
    text = (workdir / "probe.d").read_text().replace("\\\n", " ")
    _, _, rhs = text.partition(":")
    return [Path(p) for p in rhs.split() if p != "probe.c"]


def _check_deps(hs: HeaderSet, deps: list[Path]) -> list[Path]:
    roots = [Path(os.path.normpath(r.absolute())) for r in (hs.root, *hs.also)]
    uapi = []
    for d in deps:
        rd = Path(os.path.normpath(d if d.is_absolute() else Path.cwd() / d))
        if not set(rd.parts) & UAPI_DIRS:
            continue
        uapi.append(rd)
        if not any(r in rd.parents for r in roots):
            raise ProbeError(f"{hs}: the compiler read {d}, which is outside {roots}; "
                             "that header set is incomplete or the include path is wrong")
    return uapi


def run_probe(hs: HeaderSet, preamble: tuple[str, ...], headers: tuple[str, ...],
              facts: list[Fact]) -> ProbeResult:
    for h in headers:
        found = [p for p in (hs.root / h, *hs.root.glob(f"*-linux-gnu*/{h}")) if p.is_file()]
        if not found:
            raise ProbeError(f"{hs}: {h} does not exist there")
    cc = _cc()
    pending = dict(enumerate(facts))
    missing: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="warpdrive-abi-") as tmp:
        work = Path(tmp)
        for _attempt in range(3):
            src, line_to_fact = _source(preamble, headers, pending)
            proc = _compile(cc, hs, src, work)
            if proc.returncode == 0:
                break
            bad: dict[int, str] = {}
            for m in _ERR.finditer(proc.stderr):
                line = int(m.group(1))
                if line in line_to_fact:
                    bad.setdefault(line_to_fact[line], m.group(2))
            if not bad:
                raise ProbeError(f"{hs}: the probe does not compile for a reason not tied to one "
                                 f"fact:\n{proc.stderr[-4000:]}\n--- source ---\n{src}")
            for i, msg in bad.items():
                missing[i] = msg
                del pending[i]
        else:
            raise ProbeError(f"{hs}: probe still fails after dropping missing names:\n"
                             f"{proc.stderr[-4000:]}")
        headers_read = _check_deps(hs, _deps(work))
        run = subprocess.run([str(work / "probe")], capture_output=True, text=True, check=True)
    values: dict[int, int | str] = {}
    for out_line in run.stdout.splitlines():
        idx, kind, val = out_line.split(" ", 2)
        values[int(idx)] = int(val) if kind == "i" else val
    lost = set(pending) - set(values)
    if lost:
        raise ProbeError(f"{hs}: probe printed nothing for facts {sorted(lost)}")
    return ProbeResult(values, missing, headers_read)


def probe_presence(hs: HeaderSet, preamble: tuple[str, ...], headers: tuple[str, ...],
                   exprs: dict[str, str]) -> dict[str, str | None]:
    """For each key, compile its C expression alone on one line: None if it compiles (the header has
    it), else the compiler's message."""
    cc = _cc()
    lines = ["#include <stddef.h>", "#include <linux/types.h>", *preamble,
             *(f"#include <{h}>" for h in headers)]
    line_of: dict[int, str] = {}
    for n, (key, expr) in enumerate(exprs.items()):
        lines.append(f"unsigned long long probe_{n}(void) "
                     f"{{ return (unsigned long long)({expr}); }}")
        line_of[len(lines)] = key
    src = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory(prefix="warpdrive-abi-") as tmp:
        work = Path(tmp)
        (work / "probe.c").write_text(src)
        cmd = [cc, "-std=gnu11", "-fmax-errors=0", "-MD", "-MF", "probe.d", "-c", "-o", "probe.o",
               "probe.c"]
        if hs.include_flag:
            cmd[1:1] = ["-I", str(hs.root)]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C"))
        errors: dict[str, str] = {}
        for m in _ERR.finditer(proc.stderr):
            hit = line_of.get(int(m.group(1)))
            if hit is None:
                raise ProbeError(f"{hs}: presence probe broke outside a probe line:\n"
                                 f"{proc.stderr[-4000:]}")
            errors.setdefault(hit, m.group(2))
        if (work / "probe.d").exists():
            _check_deps(hs, _deps(work))
    return {key: errors.get(key) for key in exprs}
