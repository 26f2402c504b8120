"""HiSilicon ZIP plugin: ZIP jobs on QM queues (a VF brought up over a `Device`, or uacce queues).

The public API is `warpdrive.zip` (zlib-shaped functions, streams, batch sessions); this package
is the driver under it:

- `hw`: PCI identity, the 128-byte SQE layout, request types, status codes
- `sqe`: formats, software headers/trailers, building SQEs
- `job`: one request and the limits every job obeys; `lane`: one direction's queue
- `engine`: the engine (a queue per direction, a buffer pool); `session`: batched stateless jobs;
  `oneshot`: one job at a time; `stream`: stream mode

The queues come from `warpdrive.devices.hisi_qm` (QM bring-up over a `Device`, or uacce).
"""

from ..hisi_qm.bringup import QmCaps, QmDevice
from ..hisi_qm.queue import QmQueue, QueueStoppedError
from .engine import ZipEngine
from .errors import ZipBufferError, ZipDataError, ZipDeviceError, ZipError
from .hw import ZIP
from .job import Job
from .session import Session
from .stream import Deflater, Inflater

__all__ = [
    "ZIP",
    "Deflater",
    "Inflater",
    "Job",
    "QmCaps",
    "QmDevice",
    "QmQueue",
    "QueueStoppedError",
    "Session",
    "ZipBufferError",
    "ZipDataError",
    "ZipDeviceError",
    "ZipEngine",
    "ZipError",
]
