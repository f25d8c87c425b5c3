"""Training engine: loop, checkpoints, logging, optimizer, distributed helpers."""
