"""HiSilicon ZIP plugin: QM queue bring-up (VFIO / vfio-user) or uacce queues, ZIP jobs.

The public API is `warpdrive.zip` (zlib-shaped functions, streams, batch sessions); this package
is the driver under it:

- `hw`: registers, doorbells, contexts, SQE/CQE layouts (shared with the device model)
- `qm`: the QM queue layer (rings, doorbells, phase polling), reusable by other QM engines
- `bringup`: VF bring-up over a `Device` (caps, mailbox, contexts, interrupts, stop + reset)
- `uacce`: the same queues from the kernel's hisi_zip driver through /dev/hisi_zip-N
- `sqe`: formats, software headers/trailers, the ZIP SQE
- `session`: the engine, batched stateless jobs, buffer pool; `stream`: stream mode
"""

from ..hisi_qm.bringup import QmCaps, QmDevice
from ..hisi_qm.queue import QmQueue, QueueStoppedError
from .errors import ZipBufferError, ZipDataError, ZipDeviceError, ZipError
from .session import Job, Session, ZipEngine
from .stream import Deflater, Inflater

__all__ = [
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
