"""Option types shared by the training commands (``tuneloop train`` and ``tuneloop jobs create``)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import typer

from tuneloop.train.hyperparameters import check_hyperparameter


class TrainingMethod(StrEnum):
    """What is trained and how: supervised (``lora``, ``full``) or DPO on preference pairs (``dpo`` with LoRA
    adapters, ``dpo-full`` on every parameter)."""

    lora = "lora"
    full = "full"
    dpo = "dpo"
    dpo_full = "dpo-full"

    @property
    def weights(self) -> str:
        """``lora`` adapters or ``full`` fine-tuning (the API's ``training_method``)."""
        return "full" if self in (TrainingMethod.full, TrainingMethod.dpo_full) else "lora"

    @property
    def objective(self) -> str:
        """OpenAI's method type: ``supervised`` or ``dpo``."""
        return "dpo" if self in (TrainingMethod.dpo, TrainingMethod.dpo_full) else "supervised"


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
Beta = Annotated[
    str,
    typer.Option(
        "--beta",
        metavar="X|auto",
        callback=hyperparameter("beta", float, "a number"),
        help="DPO's beta (above 0, at most 2; auto = 0.1); only with --method dpo or dpo-full.",
    ),
]
Method = Annotated[
    TrainingMethod,
    typer.Option(
        "--method",
        help="Supervised with LoRA adapters (lora) or every weight (full); DPO on preference pairs likewise "
        "(dpo, dpo-full).",
    ),
]
