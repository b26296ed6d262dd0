"""A training run: set-up, the loop (`loop.train`), micro-batch and optimizer steps, the loss,
checkpoints and exact resume, metrics, stop signals and the final outputs."""
