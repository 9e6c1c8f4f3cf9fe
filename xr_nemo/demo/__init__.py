"""The toy end-to-end run behind `make demo`."""

DEFAULT_STEPS = 30
