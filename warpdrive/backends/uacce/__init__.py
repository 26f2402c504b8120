"""uacce: SVA accelerator queues (the WarpDrive kernel framework, merged in Linux 5.7)."""
