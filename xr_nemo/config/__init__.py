"""Typed configuration schemas; recipes return them and `key=value` overrides land on them."""

from xr_nemo.config.parallel import ParallelConfig

__all__ = ["ParallelConfig"]
