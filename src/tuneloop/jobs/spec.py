"""``JobSpec``: what a fine-tuning job trains, typed once from the HTTP request to the training loop.

The API builds it from the request (the one place a job's values are checked), the store keeps its
fields in the job's columns (``columns()``), and the runner reads it back (``JobSpec.of(job)``) and
turns it into the run's ``TrainConfig`` with ``train_config`` (the one function that does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tuneloop.config import Settings
from tuneloop.store.files import FileStore
from tuneloop.store.jobs import Job
from tuneloop.train.config import TrainConfig
from tuneloop.train.hyperparameters import Hyperparameters


def _metadata_limits(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
        raise ValueError("at most 16 pairs, keys up to 64 and values up to 512 characters")
    return value


#: Added to the fine-tuned model's id.
Suffix = Annotated[str, Field(min_length=1, max_length=64)]
#: OpenAI's seed range.
Seed = Annotated[int, Field(ge=0, le=2147483647)]
#: OpenAI's metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.
Metadata = Annotated[dict[str, str], AfterValidator(_metadata_limits)]
TrainingMethod = Literal["lora", "full"]
#: OpenAI's ``method.type`` that tuneloop trains.
Objective = Literal["supervised", "dpo"]


class JobSpec(BaseModel):
    """A job's model, files, training method, hyperparameters, suffix, seed and metadata."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(
        description="What the job starts from: a catalog name, or a fine-tuned model or checkpoint id (SFT then DPO)."
    )
    base_model: str = Field(
        default="", description="The catalog model under `model` (`model` itself for a catalog name, the default)."
    )
    training_file: str = Field(description="Id of the training file (file-...).")
    validation_file: str | None = Field(default=None, description="Id of the validation file, if any.")
    method: TrainingMethod = Field(default="lora", description="`lora` adapters or `full` fine-tuning.")
    objective: Objective = Field(default="supervised", description="OpenAI's method.type: `supervised` or `dpo`.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="As requested (`beta` for DPO jobs only)."
    )
    suffix: Suffix | None = Field(default=None, description="Added to the fine-tuned model's id.")
    seed: Seed = Field(description="Seed for adapter initialisation, data order and dropout.")
    metadata: Metadata | None = Field(default=None, description="The caller's key/value tags.")

    @model_validator(mode="after")
    def _base_defaults_to_model(self) -> JobSpec:
        if not self.base_model:
            object.__setattr__(self, "base_model", self.model)  # frozen: set once, while validating
        return self

    @classmethod
    def of(cls, job: Job) -> JobSpec:
        """The spec of a stored job."""
        return cls(
            model=job.model,
            base_model=job.base,
            training_file=job.training_file,
            validation_file=job.validation_file,
            method=job.method,  # type: ignore[arg-type]
            objective=job.objective,  # type: ignore[arg-type]
            hyperparameters=Hyperparameters.model_validate(job.hyperparameters),
            suffix=job.suffix,
            seed=job.seed,
            metadata=job.metadata,
        )

    def columns(self) -> dict[str, Any]:
        """The job-store columns that hold this spec (``JobStore.create(**spec.columns())``)."""
        hyperparameters = self.hyperparameters.model_dump(exclude_none=True)
        return {**self.model_dump(exclude={"hyperparameters"}), "hyperparameters": hyperparameters}

    def train_config(
        self, settings: Settings, files: FileStore, output_dir: Path, resume: bool, start_from: Path | None = None
    ) -> TrainConfig:
        """The training run of this job: its files on disk, writing to ``output_dir``; ``resume`` continues
        from the latest checkpoint there; ``start_from`` holds the weights of the fine-tuned ``model``."""
        validation = files.path(files.get(self.validation_file)) if self.validation_file else None
        return TrainConfig(
            model=self.base_model,
            start_from=start_from,
            training_file=files.path(files.get(self.training_file)),
            validation_file=validation,
            output_dir=output_dir,
            method=self.method,
            objective=self.objective,
            **self.hyperparameters.model_dump(exclude_none=True),
            seed=self.seed,
            resume_from="latest" if resume else None,
            device=settings.device if settings.device != "auto" else None,
        )
