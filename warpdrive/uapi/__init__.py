"""Interfaces defined outside this project, in ctypes, named exactly as their sources spell them.

The bottom layer: every other layer takes its constants and layouts from here, and nothing here
imports any other part of warpdrive except `warpdrive.errors` (to refuse an unsupported
architecture at import, and a constant that does not fit its ioctl field).

- `ioctl`: the asm-generic ioctl number encoding (`_IO`, `_IOR`, ...)
- `pci_regs`: `<linux/pci_regs.h>` (config-space offsets and bits)
- `vfio`: `<linux/vfio.h>`; `iommufd`: `<linux/iommufd.h>`
- `uacce`: `<misc/uacce/uacce.h>`; `hisi_qm`: `<misc/uacce/hisi_qm.h>`
- `virtio`: the virtio 1.x PCI transport, split virtqueue and virtio-crypto layouts
- `vfio_user`: the vfio-user protocol's messages (QEMU `docs/interop/vfio-user.rst`)
"""
