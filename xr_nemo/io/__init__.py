"""Filesystem helpers shared by conversion and checkpointing."""
