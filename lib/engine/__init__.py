"""Training machinery shared by every script: setup, checkpoints, resume checks, the one trainer, TAS, DDP and the
benchmark."""
