"""Device models served over vfio-user: the framework (`model`, `dma`, `pci_config`), the model
registry (`registry`), the process launcher (`launcher.open_emulated`) and the bundled models
(`warpdrive.emu.models.*`). Run one with `python -m warpdrive.emu <model> --socket PATH`.

Kept import-light: the launcher side (the client process) never imports a model.
"""
