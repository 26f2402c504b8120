"""Bundled device models. Each model lives in `warpdrive/emu/models/<name>.py` and exports
`MODEL = <its DeviceModel subclass>`; `warpdrive.emu.registry` finds them by that convention, so a
new model needs no registration anywhere else."""
