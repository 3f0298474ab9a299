"""Training machinery shared by every script: setup, checkpoints, the one trainer."""
