"""vfio-user: the client backend (`client.open_vfio_user`), the generic server that hosts a device
model (`server.VfioUserServer`), the message layouts (`protocol`) and the framing (`wire`).

Spec: QEMU `docs/interop/vfio-user.rst`. Only AF_UNIX is supported (fds travel as SCM_RIGHTS).
"""
