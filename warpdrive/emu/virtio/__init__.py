"""The device side of virtio for device models: the modern virtio-pci transport and split
virtqueues, transcribed from the virtio 1.2 specification (docs/research/virtio-crypto.md), with
layouts of their own: nothing here is shared with the virtio driver (`warpdrive.devices.virtio`,
`warpdrive.uapi.virtio`), so Linux's driver in the lab judges both independently."""
