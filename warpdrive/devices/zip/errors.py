"""ZIP errors. Each is a `WarpdriveError` (message, errno, hint) *and* a `zlib.error`, so code
written against the `zlib` module keeps working: `except zlib.error` catches corrupt input here
exactly as it does there."""

from __future__ import annotations

import zlib

from ...errors import DeviceError, UnsupportedError, WarpdriveError


class ZipError(WarpdriveError, zlib.error):
    """Base class of ZIP errors (also a `zlib.error`)."""


class ZipDataError(ZipError):
    """The compressed input is corrupt, truncated, or fails its checksum."""


class ZipDeviceError(ZipError, DeviceError):
    """The engine rejected a request or reported a status the driver does not know."""


class ZipBufferError(ZipError):
    """The output does not fit the caller's buffer (nothing was cut: the job failed)."""


class ZipUnsupportedError(ZipError, UnsupportedError, ValueError):
    """Something zlib offers that the engine cannot do (copying a stream, a preset
    dictionary). Also a ValueError, as zlib's own refusal to copy a stream is."""
