"""warpdrive.record against dataclasses itself (the judge): the same init, defaults, factories,
__post_init__, repr, eq, hash and frozen behaviour for the subset the start-up modules use."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import ClassVar

import pytest

from warpdrive.record import field, record


def _pair(**params: bool) -> tuple[type, type]:
    made = []
    for deco, fld in ((record, field), (dataclasses.dataclass, dataclasses.field)):
        class Thing:
            a: int
            b: str = "x"
            c: list[int] = fld(default_factory=list)
            d: tuple[int, ...] = fld(default=())

            def __post_init__(self) -> None:
                self.seen = True if not params.get("frozen") else None

        if params.get("frozen"):
            del Thing.__post_init__
        made.append(deco(**params)(Thing) if params else deco(Thing))
    return made[0], made[1]


@pytest.mark.parametrize("params", [{}, {"frozen": True}, {"eq": False}])
def test_record_behaves_as_dataclass(params: dict[str, bool]) -> None:
    ours, theirs = _pair(**params)
    for args, kw in (((1,), {}), ((1, "y"), {"c": [2]}), ((), {"a": 3, "d": (4,)})):
        o, t = ours(*args, **kw), theirs(*args, **kw)
        assert repr(o) == repr(t)
        assert (o == ours(*args, **kw)) == (t == theirs(*args, **kw))
        assert (o == ours(9)) == (t == theirs(9))
        assert [getattr(o, n) for n in "abcd"] == [getattr(t, n) for n in "abcd"]
        assert (type(o).__hash__ is None) == (type(t).__hash__ is None)
        if params.get("frozen"):
            with pytest.raises(TypeError):  # a list field: unhashable in both
                hash(t)
            with pytest.raises(TypeError):
                hash(o)
            o2 = ours(*args, **kw)
            object.__setattr__(o2, "c", (1,))
            assert hash(o2) == hash((o2.a, o2.b, (1,), o2.d))
            with pytest.raises(AttributeError):
                o.a = 5
            with pytest.raises(AttributeError):
                del o.a
    assert ours(1).c is not ours(1).c  # a fresh list each time
    assert not hasattr(ours, "c") and ours.b == "x" and ours.d == ()
    with pytest.raises(TypeError):
        ours()


def test_order_compares_fields_in_turn_as_dataclasses_do() -> None:
    made = []
    for deco in (record, dataclasses.dataclass):
        class Span:
            start: int
            end: int
        made.append(deco(frozen=True, order=True)(Span))
    ours, theirs = made
    pairs = [((1, 5), (2, 0)), ((1, 5), (1, 5)), ((3, 1), (3, 0))]
    for a, b in pairs:
        for op in ("__lt__", "__le__", "__gt__", "__ge__"):
            assert getattr(ours(*a), op)(ours(*b)) == getattr(theirs(*a), op)(theirs(*b))
    assert sorted([ours(3, 1), ours(1, 9), ours(1, 2)]) == [ours(1, 2), ours(1, 9), ours(3, 1)]
    with pytest.raises(TypeError):
        ours(1, 2) < theirs(1, 2)  # noqa: B015 - the comparison raising is the point


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError):
        @record
        class Bad:
            a: int = 0
            b: int


def test_the_model_boots_without_dataclasses_inspect_or_typing() -> None:
    code = ("import sys, warpdrive.emu.serve, warpdrive.emu.registry as r, warpdrive.emu.server;"
            "r.load_model('zip');"
            "print(sorted({'dataclasses', 'inspect', 'typing'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(p for p in sys.path if p)})
    assert out.stdout.strip() == "[]"


def test_the_cli_runs_without_dataclasses_or_inspect(tmp_path: Path) -> None:
    src = tmp_path / "one"
    src.write_bytes(b"x")
    code = ("import sys, atexit;"
            "atexit.register(lambda: print(sorted({'dataclasses', 'inspect'} & set(sys.modules)),"
            " file=sys.stderr));"
            "sys.argv = ['warpdrive', 'compress', '-k', '-q', sys.argv[1]];"
            "from warpdrive.cli import entry; entry()")
    out = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ":".join(p for p in sys.path if p)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "[]"
    assert gzip.decompress((tmp_path / "one.gz").read_bytes()) == b"x"


# -- what mypy accepts on a record and only dataclasses would do at run time ------------------
_ROOT = Path(__file__).resolve().parent.parent
_TREES = ("warpdrive", "tests", "benchmarks", "lab", "examples")
_HELPERS = {"fields", "replace", "asdict", "astuple", "is_dataclass"}


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    """Every Python file of the tree, by dotted module name (a package by its own name)."""
    out = {}
    for tree in _TREES:
        for path in sorted((_ROOT / tree).rglob("*.py")):
            parts = list(path.relative_to(_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = (path, ast.parse(path.read_text(), str(path)))
    return out


def _is_record(deco: ast.expr) -> bool:
    target = deco.func if isinstance(deco, ast.Call) else deco
    return isinstance(target, ast.Name) and target.id == "record"


def test_no_record_meets_dataclasses_helpers_or_a_subclass() -> None:
    """For mypy a record *is* a dataclass: `dataclasses.fields/replace/asdict/astuple/
    is_dataclass` on one, or a class (dataclass or not) deriving from one, type-check and then
    fail or silently differ at run time (no `__dataclass_fields__`; a derived dataclass's
    `__init__` lacks the record's fields). No module that sees a record does either."""
    sources = _sources()
    records = {mod: {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                     and any(_is_record(d) for d in n.decorator_list)}
               for mod, (_, tree) in sources.items()}
    assert sum(map(len, records.values())) >= 31  # the scan finds the converted classes
    bad = []
    for mod, (path, tree) in sources.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        seen = set(records[mod])  # the record classes this module can name
        helpers = False
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = node.module or ""
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    src = ".".join([*base, *([src] if src else [])])
                if src == "dataclasses":
                    helpers |= any(a.name in _HELPERS for a in node.names)
                seen |= {a.asname or a.name for a in node.names
                         if a.name in records.get(src, ())}
            elif (isinstance(node, ast.Attribute) and node.attr in _HELPERS
                  and isinstance(node.value, ast.Name) and node.value.id == "dataclasses"):
                helpers = True
        if helpers and seen:
            bad.append(f"{path}: dataclasses helpers beside records {sorted(seen)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                based = {b.id for b in node.bases if isinstance(b, ast.Name)} & seen
                if based:
                    bad.append(f"{path}: class {node.name} derives from record {sorted(based)}")
    assert not bad, "\n".join(bad)


def test_match_args_and_a_mutable_default_as_dataclasses() -> None:
    made = []
    for deco in (record, dataclasses.dataclass):
        class Pair:
            a: int
            b: int = 2
        made.append(deco(Pair))
    for cls in made:
        assert cls.__match_args__ == ("a", "b")
        match cls(1):
            case cls(x, y):
                assert (x, y) == (1, 2)
            case _:
                raise AssertionError("no match")
    for deco, fld in ((record, field), (dataclasses.dataclass, dataclasses.field)):
        for default in ([], {}, set()):
            with pytest.raises(ValueError, match="mutable default"):
                class Shared:
                    a: list[int] = default
                deco(Shared)
            with pytest.raises(ValueError, match="mutable default"):
                class Shared2:
                    a: list[int] = fld(default=default)
                deco(Shared2)


def test_class_variables_are_not_fields_as_in_dataclasses() -> None:
    made = []
    for deco in (record, dataclasses.dataclass):
        class Kind:
            name: ClassVar[str] = "zip"
            other: typing.ClassVar[int] = 1
            a: int = 0
        made.append(deco(Kind))
    for cls in made:
        assert cls.__match_args__ == ("a",) and repr(cls(2)).endswith(".Kind(a=2)")
        assert cls.name == "zip" and cls.other == 1
