"""Training: the Ray Train loop, parallelism, checkpoints and metrics."""
