"""`python -m warpdrive.emu <model> --socket PATH`: serve a bundled device model over vfio-user."""

from ..syscalls import exit_now
from .serve import main

# Its client (a launcher's `stop`, QEMU) waits for this exit: skip the interpreter's teardown.
exit_now(main())
