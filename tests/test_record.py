"""warpdrive.record against dataclasses itself (the judge): the same init, defaults, factories,
__post_init__, repr, eq, hash and frozen behaviour for the subset the start-up modules use."""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
import sys
from pathlib import Path

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
