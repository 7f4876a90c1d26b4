"""Training: device and determinism, the loops, mixed precision, DDP, stop and resume."""
