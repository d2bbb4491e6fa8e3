"""Training: the LightningModule, Trainer assembly, callbacks, checkpoints, Ctrl+C, and the run, phase by phase."""
