"""`record` and `field`: the part of `dataclasses.dataclass` that the modules on a device model's
start-up path use (init with defaults and default factories, `__post_init__`, repr, eq, order,
frozen with hash, `__match_args__`), built without importing dataclasses, which imports inspect
(with ast, dis and tokenize): ~7-10 ms of every model process's boot and of the CLI's, issue 11.

For the type checker they *are* `dataclasses.dataclass` and `field`, so mypy holds the classes
to the same contract. What is not here (slots, kw_only, InitVar, inheritance between
records, `dataclasses.fields`/`replace`/`asdict`) raises or is simply absent: use dataclasses.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (not typing's: importing typing costs ~3 ms of every process's boot)
if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field
else:
    _MISSING = object()

    class FrozenRecordError(AttributeError):
        """An assignment to a field of a frozen record (as dataclasses' FrozenInstanceError)."""

    class _Field:
        __slots__ = ("default", "factory")

        def __init__(self, default: object, factory: object) -> None:
            self.default = default
            self.factory = factory

    def field(*, default: object = _MISSING, default_factory: object = _MISSING) -> object:
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("field() takes a default or a default_factory, not both")
        return _Field(default, default_factory)

    def record(cls: type | None = None, /, *, frozen: bool = False, eq: bool = True,
               order: bool = False) -> object:
        def wrap(c: type) -> type:
            return _build(c, frozen=frozen, eq=eq, order=order)

        return wrap if cls is None else wrap(cls)

    def _frozen_setattr(self: object, name: str, value: object) -> None:
        raise FrozenRecordError(f"cannot assign to field {name!r}")

    def _frozen_delattr(self: object, name: str) -> None:
        raise FrozenRecordError(f"cannot delete field {name!r}")

    def _order(cls: type, names: list[str]) -> None:
        """__lt__ & co. as dataclasses makes them: the fields as tuples, same class only."""
        import operator

        def make(op: object) -> object:
            def compare(self: object, other: object) -> bool:
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return op(tuple(getattr(self, n) for n in names),  # type: ignore[operator]
                          tuple(getattr(other, n) for n in names))
            return compare

        for name in ("lt", "le", "gt", "ge"):
            setattr(cls, f"__{name}__", make(getattr(operator, name)))

    def _build(cls: type, *, frozen: bool, eq: bool, order: bool) -> type:
        if any("__dataclass_fields__" in vars(b) or "_record_fields" in vars(b)
               for b in cls.__mro__[1:]):
            raise TypeError(f"{cls.__name__}: records do not inherit fields; use dataclasses")
        # (cls.__annotations__: from 3.14 on, vars() holds them only when stringized)
        names = [n for n, a in cls.__annotations__.items()
                 if not str(a).startswith(("ClassVar", "typing.ClassVar"))]
        env: dict[str, object] = {"_MISSING": _MISSING, "_set": object.__setattr__}
        params, body = [], []
        for n in names:
            d = vars(cls).get(n, _MISSING)
            factory = _MISSING
            if isinstance(d, _Field):
                d, factory = d.default, d.factory
                if d is _MISSING:
                    delattr(cls, n)  # as dataclasses: no class attribute for a factory field
                else:
                    setattr(cls, n, d)
            if factory is not _MISSING:
                env[f"_f_{n}"] = factory
                params.append(f"{n}=_MISSING")
                value = f"_f_{n}() if {n} is _MISSING else {n}"
            elif d is not _MISSING:
                if d.__class__.__hash__ is None:  # as dataclasses: one list shared by all
                    raise ValueError(f"{cls.__name__}: mutable default {type(d).__name__} "
                                     f"for field {n!r}; use default_factory")
                env[f"_d_{n}"] = d
                params.append(f"{n}=_d_{n}")
                value = n
            else:
                if any("=" in p for p in params):
                    raise TypeError(f"{cls.__name__}: field {n!r} without a default follows "
                                    "one with a default")
                params.append(n)
                value = n
            body.append(f"  _set(self, {n!r}, {value})" if frozen else f"  self.{n} = {value}")
        if hasattr(cls, "__post_init__"):
            body.append("  self.__post_init__()")
        src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["  pass"])
        exec(src, env)
        init = env["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
        cls.__init__ = init  # type: ignore[misc]
        cls._record_fields = tuple(names)  # type: ignore[attr-defined]
        cls.__match_args__ = tuple(names)  # type: ignore[attr-defined]  # `case Cls(a, b)`

        def __repr__(self: object) -> str:
            return (f"{type(self).__qualname__}("
                    + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")")

        cls.__repr__ = __repr__  # type: ignore[method-assign]
        if eq:
            def __eq__(self: object, other: object) -> bool:
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return (tuple(getattr(self, n) for n in names)
                        == tuple(getattr(other, n) for n in names))

            cls.__eq__ = __eq__  # type: ignore[method-assign,assignment]
            if "__hash__" not in vars(cls):
                if frozen:
                    def __hash__(self: object) -> int:
                        return hash(tuple(getattr(self, n) for n in names))

                    cls.__hash__ = __hash__  # type: ignore[method-assign]
                else:
                    cls.__hash__ = None  # type: ignore[assignment]  # mutable and compared
        if order:
            _order(cls, names)
        if frozen:
            cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign,assignment]
            cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign,assignment]
        return cls
