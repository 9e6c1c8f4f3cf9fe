"""The training loop shared by SFT and GRPO: optimizer, LR schedule, checkpoints and resume, metrics."""
