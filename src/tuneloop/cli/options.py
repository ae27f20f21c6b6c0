"""Option types shared by the training commands (``tuneloop train`` and ``tuneloop jobs create``)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

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


Epochs = Annotated[
    str,
    typer.Option("--epochs", metavar="N|auto", callback=auto_or(int, "an integer"), help="Passes over the data."),
]
BatchSize = Annotated[
    str,
    typer.Option("--batch-size", metavar="N|auto", callback=auto_or(int, "an integer"), help="Examples per step."),
]
LearningRateMultiplier = Annotated[
    str,
    typer.Option(
        "--lr-multiplier", metavar="X|auto", callback=auto_or(float, "a number"), help="Learning-rate multiplier."
    ),
]
Method = Annotated[TrainingMethod, typer.Option("--method", help="LoRA adapters or full fine-tuning.")]
