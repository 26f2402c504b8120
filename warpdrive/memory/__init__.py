"""DMA memory: allocation, the memory-kind check every DMA map passes, memlock preflight."""

from .buffer import DmaBuffer, hugepage_sizes
from .check import DmaMemoryInfo, MemoryKind, check_dma_memory, inspect_dma_memory
from .memlock import binding_memlock_limit, check_memlock, has_cap_ipc_lock, memlock_limit

__all__ = [
    "DmaBuffer",
    "DmaMemoryInfo",
    "MemoryKind",
    "binding_memlock_limit",
    "check_dma_memory",
    "check_memlock",
    "has_cap_ipc_lock",
    "hugepage_sizes",
    "inspect_dma_memory",
    "memlock_limit",
]
