"""ZIP errors. Each is a `WarpdriveError` (message, errno, hint) *and* a `zlib.error`, so code
written against the `zlib` module keeps working: `except zlib.error` catches corrupt input here
exactly as it does there."""

from __future__ import annotations

import zlib

from ...errors import DeviceError, WarpdriveError


class ZipError(WarpdriveError, zlib.error):
    """Base class of ZIP errors (also a `zlib.error`)."""


class ZipDataError(ZipError):
    """The compressed input is corrupt, truncated, or fails its checksum."""


class ZipDeviceError(ZipError, DeviceError):
    """The engine rejected a request or reported a status the driver does not know."""


class ZipBufferError(ZipError):
    """The output does not fit the caller's buffer (nothing was cut: the job failed)."""
