"""Find bundled device models by name: `warpdrive/emu/models/<name>.py` exporting `MODEL`."""

from __future__ import annotations

import importlib
import re

from ..errors import DeviceNotFoundError, InvalidArgumentError
from .model import DeviceModel

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PACKAGE = "warpdrive.emu.models"


def available_models() -> list[str]:
    """Names of the bundled models (module names; importing none of them)."""
    import pkgutil  # here: serving a model by name (the launcher's case) needs no listing

    from . import models

    return sorted(m.name for m in pkgutil.iter_modules(models.__path__)
                  if not m.name.startswith("_"))


def load_model(name: str) -> type[DeviceModel]:
    """The DeviceModel subclass of model `name`."""
    if not _NAME.match(name):
        raise InvalidArgumentError(f"{name!r} is not a device model name",
                                   hint=f"choose one of: {', '.join(available_models())}")
    try:
        module = importlib.import_module(f"{_PACKAGE}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{_PACKAGE}.{name}":
            raise
        raise DeviceNotFoundError(
            f"no device model named {name!r}",
            hint=f"bundled models: {', '.join(available_models()) or 'none'}") from None
    cls = getattr(module, "MODEL", None)
    if not (isinstance(cls, type) and issubclass(cls, DeviceModel)):
        raise DeviceNotFoundError(f"module {module.__name__} does not export MODEL = a "
                                  "DeviceModel subclass")
    return cls
