"""One error family for everything a user can get wrong.

An `XrNemoError` says what is wrong, where (file, key, rank, tensor) and what to do about it. The CLI
prints it without a traceback and exits non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations


class XrNemoError(Exception):
    """A user-facing error: what went wrong, where, and how to fix it."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.fix:
            parts.append(f"  fix:   {self.fix}")
        return "\n".join(parts)


class ConfigError(XrNemoError):
    """A configuration value is invalid or inconsistent with the launch."""


class LaunchError(XrNemoError):
    """The process was launched in an environment xr-nemo cannot initialise from."""
