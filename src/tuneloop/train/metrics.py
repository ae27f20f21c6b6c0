"""Per-step metrics, the callbacks that receive them, and the metrics CSV (OpenAI's columns first)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from tuneloop.train.config import ResolvedHyperparameters

#: DPO's metrics (empty in supervised runs): reward margin and preference accuracy on train and validation.
DPO_COLUMNS = [
    f"{prefix}_{name}"
    for prefix in ("train", "valid", "full_valid")
    for name in ("reward_margin", "preference_accuracy")
]
#: OpenAI's result-file columns, then ours (DPO's last).
CSV_COLUMNS = [
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "train_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "full_valid_answer_accuracy",
    "epoch",
    "learning_rate",
    "trained_tokens",
    "tokens_per_second",
    "elapsed_seconds",
    *DPO_COLUMNS,
]


class StepMetrics(BaseModel):
    """What one optimizer step measured; validation fields are None when not computed at that step."""

    step: int = Field(description="1-based optimizer step.")
    total_steps: int = Field(description="Steps of the whole run.")
    epoch: int = Field(description="1-based epoch the step belongs to.")
    train_loss: float = Field(description="Mean cross-entropy over the step's trained tokens (DPO: mean DPO loss).")
    train_mean_token_accuracy: float | None = Field(
        default=None, description="Fraction of the step's trained tokens predicted exactly (None for DPO)."
    )
    valid_loss: float | None = Field(default=None, description="Mean loss on a validation batch.")
    valid_mean_token_accuracy: float | None = Field(default=None, description="Token accuracy on a validation batch.")
    full_valid_loss: float | None = Field(
        default=None, description="Mean loss on the whole validation file (end of each epoch)."
    )
    full_valid_mean_token_accuracy: float | None = Field(
        default=None, description="Token accuracy on the whole validation file (end of each epoch)."
    )
    full_valid_answer_accuracy: float | None = Field(
        default=None,
        description="Fraction of validation examples whose whole answer is predicted exactly (greedy exact match).",
    )
    train_reward_margin: float | None = Field(
        default=None, description="DPO: mean reward margin beta*(chosen log-ratio - rejected log-ratio) of the step."
    )
    train_preference_accuracy: float | None = Field(
        default=None, description="DPO: fraction of the step's pairs whose chosen log-ratio beats the rejected."
    )
    valid_reward_margin: float | None = Field(default=None, description="DPO: mean reward margin, validation batch.")
    valid_preference_accuracy: float | None = Field(
        default=None, description="DPO: preference accuracy on a validation batch."
    )
    full_valid_reward_margin: float | None = Field(
        default=None, description="DPO: mean reward margin on the whole validation file (end of each epoch)."
    )
    full_valid_preference_accuracy: float | None = Field(
        default=None, description="DPO: preference accuracy on the whole validation file (end of each epoch)."
    )
    learning_rate: float = Field(description="Learning rate used by this step.")
    trained_tokens: int = Field(description="Tokens processed so far (example tokens, OpenAI's meaning).")
    tokens_per_second: float = Field(description="Tokens processed per second of training in this process.")
    elapsed_seconds: float = Field(description="Training time so far, across resumes.")

    def csv_row(self) -> dict[str, object]:
        """This step as a metrics.csv row (empty cells for metrics not computed)."""
        row = self.model_dump()
        row["train_accuracy"] = (  # OpenAI's column: token accuracy, or DPO's preference accuracy
            self.train_mean_token_accuracy
            if self.train_mean_token_accuracy is not None
            else self.train_preference_accuracy
        )
        return {k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS}


class CheckpointInfo(BaseModel):
    """A checkpoint written to disk."""

    step: int = Field(description="Step after which it was written.")
    epoch: int = Field(description="Epoch of that step (1-based).")
    path: Path = Field(description="The checkpoint folder.")
    metrics: StepMetrics | None = Field(default=None, description="Metrics of that step.")


@dataclass
class TrainCallbacks:
    """Hooks the caller (the job worker, the CLI's progress bar) passes to ``train`` (called on rank 0 only).

    ``on_start`` gets the resolved hyperparameters once the data is loaded, before the first step.
    """

    on_start: Callable[[ResolvedHyperparameters], None] | None = None
    on_step: Callable[[StepMetrics], None] | None = None
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None
    on_epoch_end: Callable[[int, StepMetrics], None] | None = None


def _clean(value: str) -> float | int | None:
    if value == "":
        return None
    number = float(value)
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


class MetricsCSV:
    """``metrics.csv``: one row per step, flushed as written (a killed run keeps its rows)."""

    def __init__(self, path: Path):
        self.path = path

    def start(self, keep_until_step: int) -> None:
        """Create the file, or keep only rows up to ``keep_until_step`` (a resumed run rewrites the rest)."""
        rows = self.read() if keep_until_step > 0 and self.path.is_file() else []
        with self.path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                if row["step"] <= keep_until_step:
                    writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})

    def append(self, metrics: StepMetrics) -> None:
        """Add one step's row."""
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=CSV_COLUMNS).writerow(metrics.csv_row())

    def read(self) -> list[dict[str, float | int | None]]:
        """All rows, numbers parsed, empty cells as None."""
        with self.path.open(newline="", encoding="utf-8") as f:
            return [{k: _clean(v) for k, v in row.items()} for row in csv.DictReader(f)]


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0."""
    return numerator / denominator if denominator else math.nan
