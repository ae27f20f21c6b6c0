"""Exceptions shared across tuneloop; each carries a message fit for a one-line CLI error."""

from __future__ import annotations


class TuneloopError(Exception):
    """Base class: an error the user can act on (bad input, unknown name, corrupt file)."""

    exit_code = 1


class ModelNotFoundError(TuneloopError):
    """A model name that is not in the catalog."""

    exit_code = 2

    def __init__(self, name: str, available: list[str]):
        self.name = name
        self.available = available
        listed = ", ".join(available) if available else "(none)"
        super().__init__(f"unknown model '{name}'; available models: {listed}")


class InvalidModelError(TuneloopError):
    """A file or folder that cannot be used as a model (corrupt, truncated, unsupported)."""

    exit_code = 2
