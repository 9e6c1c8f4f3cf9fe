"""The toy end-to-end run behind `make demo`."""
