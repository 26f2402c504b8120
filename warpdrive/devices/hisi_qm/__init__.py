"""HiSilicon QM: the queue manager every HiSilicon accelerator (ZIP, SEC, HPRE) sits behind.

- `queue`: one SQ/CQ pair in memory and its doorbell, as the CPU drives it
- `bringup`: a QM virtual function brought up from user space over a `Device`
- `uacce`: the same queues from the kernel's driver through a uacce device (SVA)
"""
