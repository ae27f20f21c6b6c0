"""A job's hyperparameters: one set of bounds and one message, shared by the HTTP API, the CLI and ``TrainConfig``.

Each value is ``"auto"`` or a number within ``BOUNDS`` (the bounds the HTTP API has always accepted).
``check_hyperparameter`` is the one check; an out-of-range value raises ``HyperparameterError`` whose
message (``Invalid value for 'n_epochs': must be 'auto' or an integer from 1 to 50``) the API answers
with a 400 and the CLI prints as its one-line error. This module imports neither torch nor the
training loop, so the CLI can use it at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from tuneloop.errors import TuneloopError

Auto = Literal["auto"]


@dataclass(frozen=True)
class Bound:
    """The numbers a hyperparameter accepts: ``low`` (exclusive when ``low_open``) to ``high``, inclusive."""

    integer: bool
    low: float
    high: float
    low_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` is within the bound."""
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        """The rule in words, as the error message gives it."""
        if self.integer:
            return f"must be 'auto' or an integer from {self.low:g} to {self.high:g}"
        low = f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return f"must be 'auto' or a number {low} and at most {self.high:g}"


#: The one set of bounds (OpenAI's supervised hyperparameters, as the HTTP API accepts them, and DPO's ``beta``:
#: above 0, at most 2; the usual values are 0.01-0.5, larger ones barely let the policy leave the reference).
BOUNDS: dict[str, Bound] = {
    "n_epochs": Bound(integer=True, low=1, high=50),
    "batch_size": Bound(integer=True, low=1, high=256),
    "learning_rate_multiplier": Bound(integer=False, low=0, high=100, low_open=True),
    "beta": Bound(integer=False, low=0, high=2, low_open=True),
}
#: The hyperparameters every method has (DPO adds ``beta``).
COMMON = ("n_epochs", "batch_size", "learning_rate_multiplier")


class HyperparameterError(TuneloopError, ValueError):
    """A hyperparameter value outside its bound (or not a number); ``name`` says which."""

    exit_code = 2  # a usage error, like a malformed option

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"Invalid value for '{name}': {BOUNDS[name].describe()}")


def _number(value: Any, integer: bool) -> float | None:
    """``value`` as an int (``integer``) or a float, or None when it is not such a number."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if integer:
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    return float(value)  # NaN fails every bound


def check_hyperparameter(name: str, value: Any) -> int | float | Literal["auto"]:
    """The one check: ``value`` as ``"auto"`` or a number within ``BOUNDS[name]``; else ``HyperparameterError``."""
    if value == "auto":
        return "auto"
    bound = BOUNDS[name]
    number = _number(value, bound.integer)
    if number is None or not bound.contains(number):
        raise HyperparameterError(name)
    return number


def _checked(name: str) -> BeforeValidator:
    return BeforeValidator(partial(check_hyperparameter, name))


Epochs = Annotated[Auto | int, _checked("n_epochs")]
BatchSize = Annotated[Auto | int, _checked("batch_size")]
LearningRateMultiplier = Annotated[Auto | float, _checked("learning_rate_multiplier")]
Beta = Annotated[Auto | float, _checked("beta")]


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters: each ``"auto"`` or a number within ``BOUNDS``; ``beta`` for DPO only (None
    for supervised jobs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_epochs: Epochs = "auto"
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    beta: Beta | None = None

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """Build from raw values; the first one out of bounds raises ``HyperparameterError`` (not pydantic's error)."""
        return cls(**{name: check_hyperparameter(name, values[name]) for name in BOUNDS if name in values})
