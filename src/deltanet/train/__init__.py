"""Training: data, the training loop, checkpoints and the `deltanet train` command."""
