"""Option types shared by the training commands (``tuneloop train`` and ``tuneloop jobs create``)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import typer


class TrainingMethod(StrEnum):
    """How the weights are trained: LoRA adapters or every parameter."""

    lora = "lora"
    full = "full"


def auto_or(cast: type[int] | type[float], what: str) -> Callable[[str], int | float | str]:
    """An option callback accepting ``auto`` or a number of type ``cast``."""

    def parse(value: str) -> int | float | str:
        if value == "auto":
            return value
        try:
            return cast(value)
        except ValueError:
            raise typer.BadParameter(f"expected 'auto' or {what}, got '{value}'") from None

    return parse
