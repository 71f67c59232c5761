"""Training: the trainer, run directories and checkpoints, plots of runs."""
