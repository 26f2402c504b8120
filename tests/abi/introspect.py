"""Turn a ctypes uAPI module into facts: (symbol, Python value, C expression to compare with).

Facts come from the module itself: its `__all__` names every struct and constant, and each struct
is walked through `_fields_` (nested structs, unions and arrays of structs included). The C
expressions follow the mapping rules written down in spec.py.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .spec import C_EXPR_OVERRIDES, ModuleSpec

_SIMPLE = ctypes._SimpleCData


@dataclass(frozen=True)
class Fact:
    symbol: str  # what a mismatch report names, e.g. "vfio_region_info.size offsetof"
    kind: str  # "sizeof", "alignof", "offsetof", "fieldsize", "signed", "flex", "const", ...
    python: int | str
    c_expr: str  # a C expression of integer type, or of type char* when python is a str


def is_ctypes_aggregate(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, ctypes.Structure | ctypes.Union)


def c_type_name(cls: type) -> str:
    return ("union " if issubclass(cls, ctypes.Union) else "struct ") + cls.__name__


def _is_signed(t: type) -> bool:
    return bool(t(-1).value < 0)


def _field_facts(top: str, ctype: str, cls: type, py_path: str, c_path: str,
                 base: int) -> list[Fact]:
    facts: list[Fact] = []
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for entry in cls._fields_:  # type: ignore[attr-defined]
        name, ftype = entry[0], entry[1]
        if len(entry) > 2:
            raise AssertionError(f"{top}: bit-field {name!r} is not supported by the ABI test")
        descr = getattr(cls, name)
        off = base + descr.offset
        py = f"{py_path}.{name}" if py_path else name
        if name in anonymous:
            # C anonymous member: no name in C, compare its members under the parent's path
            if not is_ctypes_aggregate(ftype):
                raise AssertionError(f"{top}.{py}: _anonymous_ field must be a struct/union")
            facts += _field_facts(top, ctype, ftype, py, c_path, off)
            continue
        cp = f"{c_path}.{name}" if c_path else name
        member = f"((({ctype} *)0)->{cp})"
        sym = f"{top}.{py}"
        facts.append(Fact(sym, "offsetof", off, f"offsetof({ctype}, {cp})"))
        facts.append(Fact(sym, "fieldsize", ctypes.sizeof(ftype), f"sizeof{member}"))
        if is_ctypes_aggregate(ftype):
            facts += _field_facts(top, ctype, ftype, py, cp, off)
        elif issubclass(ftype, ctypes.Array):
            elem = ftype._type_
            facts.append(Fact(f"{sym}[0]", "fieldsize", ctypes.sizeof(elem), f"sizeof{member}[0]"))
            if is_ctypes_aggregate(elem):
                facts += _field_facts(top, ctype, elem, f"{py}[0]", f"{cp}[0]", off)
        elif issubclass(ftype, _SIMPLE):
            facts.append(Fact(sym, "signed", int(_is_signed(ftype)),
                              f"((__typeof__{member})-1 < 0)"))
        else:
            raise AssertionError(f"{sym}: unsupported ctypes field type {ftype!r}")
    return facts


def struct_facts(cls: type) -> list[Fact]:
    ctype = c_type_name(cls)
    top = cls.__name__
    flex = cls.__dict__.get("_flexible_")
    align = ctypes.alignment(cls)
    if flex is not None:
        # C counts the flexible member in the struct's alignment (not in its size); ctypes, which
        # leaves it out, cannot: compare with the alignment C would give (see spec.py)
        align = max(align, ctypes.alignment(flex[1]))
    facts = [
        Fact(top, "sizeof", ctypes.sizeof(cls), f"sizeof({ctype})"),
        Fact(top, "alignof", align, f"_Alignof({ctype})"),
    ]
    facts += _field_facts(top, ctype, cls, "", "", 0)
    if flex is not None:
        name, elem = flex
        sym = f"{top}.{name}[] (flexible array member)"
        facts.append(Fact(sym, "flex offsetof == python sizeof", ctypes.sizeof(cls),
                          f"offsetof({ctype}, {name})"))
        facts.append(Fact(sym, "element size", ctypes.sizeof(elem),
                          f"sizeof((({ctype} *)0)->{name}[0])"))
        if is_ctypes_aggregate(elem) and elem.__name__.startswith("_"):
            raise AssertionError(f"{sym}: flexible element type must be a public struct")
    return facts


def constant_fact(name: str, value: int | str) -> Fact:
    expr = C_EXPR_OVERRIDES[name][0] if name in C_EXPR_OVERRIDES else name
    return Fact(name, "const", value, expr)


@dataclass
class ModuleFacts:
    module: ModuleType
    structs: list[type]
    constants: dict[str, int | str]
    functions: list[str]
    facts: list[Fact]


def collect(spec: ModuleSpec) -> ModuleFacts:
    mod = importlib.import_module(spec.module)
    exported = getattr(mod, "__all__", None)
    if not exported:
        raise AssertionError(f"{spec.module} has no __all__: the ABI test compares what it lists")
    structs: list[type] = []
    constants: dict[str, int | str] = {}
    functions: list[str] = []
    facts: list[Fact] = []
    for name in exported:
        obj = getattr(mod, name)
        if is_ctypes_aggregate(obj):
            structs.append(obj)
            facts += struct_facts(obj)
        elif isinstance(obj, bool):
            raise AssertionError(f"{spec.module}.{name}: a bool is not a uAPI constant")
        elif isinstance(obj, int | str):
            constants[name] = obj
            facts.append(constant_fact(name, obj))
        elif callable(obj):
            functions.append(name)  # function-like macros: compared via spec.func_macros
        else:
            raise AssertionError(f"{spec.module}.{name}: don't know how to compare {obj!r}")
    for py_call, c_expr in spec.func_macros:
        value = eval(py_call, vars(mod))  # a literal call written in spec.py
        facts.append(Fact(f"{py_call}  [C: {c_expr}]", "macro", value, c_expr))
    return ModuleFacts(mod, structs, constants, functions, facts)
