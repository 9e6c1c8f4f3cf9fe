"""Verifiable rewards: pure functions of (completion, gold answer), run in worker processes with a hard
deadline per answer so that no completion can hang or crash training."""
