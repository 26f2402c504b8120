"""The ZIP model and the ZIP driver keep separate transcriptions of the hardware layout (neither
imports the other, tests/test_layers.py enforces it). Each is checked here against the other:
every name both define must have the same value, so a slip in either fails a test instead of
being copied into the witness. Linux's own driver in the lab is the judge of both."""

from __future__ import annotations

import struct
from types import ModuleType

import pytest

from warpdrive.devices.hisi_qm import regs as driver_qm
from warpdrive.devices.zip import hw as driver_zip
from warpdrive.emu.models import _zip_layout as model


def _constants(mod: ModuleType) -> dict[str, object]:
    return {k: v for k, v in vars(mod).items()
            if k.isupper() and isinstance(v, (int, dict, struct.Struct))}


def _comparable(v: object) -> object:
    return v.format if isinstance(v, struct.Struct) else v


DRIVER = {**_constants(driver_qm), **_constants(driver_zip)}
SHARED = sorted(set(_constants(model)) & set(DRIVER))


# What only a device needs (the driver reads none of it): its own capability choices, the
# vectors it offers, the hardware SGL a driver of this project does not build.
DEVICE_ONLY = {
    "MODEL_CAP_VER", "MODEL_FUNC_CAPS", "V3_EQ_IRQ", "V3_AEQ_IRQ", "V3_ABN_IRQ", "V3_PF2VF_IRQ",
    "V3_IRQ_NUM", "V3_VF_IRQ_NUM", "V2_MSI_VECTORS", "V3_MSI_VECTORS", "ZIP_V3_CAPS",
    "SGL_HEADER", "SGL_HEADER_SIZE", "SGE", "SGE_SIZE", "SGE_OFFSET_MASK", "SGL_MAX_CHAIN",
}


def test_the_layouts_overlap_where_the_model_needs_them() -> None:
    """Nearly everything the model defines is something the driver defines too; the rest is
    declared above as device-only."""
    own = set(_constants(model)) - set(DRIVER)
    assert len(SHARED) >= 90 and own == DEVICE_ONLY, own ^ DEVICE_ONLY


@pytest.mark.parametrize("name", SHARED)
def test_model_and_driver_agree(name: str) -> None:
    assert _comparable(getattr(model, name)) == _comparable(DRIVER[name])


@pytest.mark.parametrize("value", [0, 0x1234_5678_9ABC_DEF0, (3 << 32) | (1 << 12) | 5])
def test_doorbell_encodings_agree(value: int) -> None:
    qn, cmd, index, prio = model.doorbell_decode_v2(value)
    assert driver_qm.doorbell_decode_v2(value) == (qn, cmd, index, prio)
    assert model.doorbell_decode_v2(driver_qm.doorbell_v2(qn, cmd, index, prio)) == \
        (qn, cmd, index, prio)


def test_vft_encodings_agree() -> None:
    for base, num in ((0, 1), (0, 2), (64, 16), (1000, 1024)):
        assert model.vft_encode_v2(base, num) == driver_qm.vft_encode_v2(base, num)
        assert driver_qm.vft_decode_v2(model.vft_encode_v2(base, num)) == (base, num)
