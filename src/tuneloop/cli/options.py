"""Option types shared by the training commands (``tuneloop train`` and ``tuneloop jobs create``)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer

from tuneloop.train.hyperparameters import check_hyperparameter


class TrainingMethod(StrEnum):
    """How the weights are trained: LoRA adapters or every parameter."""

    lora = "lora"
    full = "full"


def hyperparameter(name: str, cast: type[int] | type[float], what: str) -> Callable[[str], int | float | str]:
    """An option callback: ``auto`` or a number of type ``cast``, within the bounds every job shares.

    A value that is not a number is a usage error naming the option; a number out of bounds raises
    ``HyperparameterError``, which ``tuneloop`` prints as one line, with the message the API answers.
    """

    def parse(value: str) -> int | float | str:
        if value == "auto":
            return value
        try:
            number = cast(value)
        except ValueError:
            raise typer.BadParameter(f"expected 'auto' or {what}, got '{value}'") from None
        return check_hyperparameter(name, number)

    return parse


Epochs = Annotated[
    str,
    typer.Option(
        "--epochs",
        metavar="N|auto",
        callback=hyperparameter("n_epochs", int, "an integer"),
        help="Passes over the data (1-50).",
    ),
]
BatchSize = Annotated[
    str,
    typer.Option(
        "--batch-size",
        metavar="N|auto",
        callback=hyperparameter("batch_size", int, "an integer"),
        help="Examples per step (1-256).",
    ),
]
LearningRateMultiplier = Annotated[
    str,
    typer.Option(
        "--lr-multiplier",
        metavar="X|auto",
        callback=hyperparameter("learning_rate_multiplier", float, "a number"),
        help="Learning-rate multiplier (above 0, at most 100).",
    ),
]
Method = Annotated[TrainingMethod, typer.Option("--method", help="LoRA adapters or full fine-tuning.")]
