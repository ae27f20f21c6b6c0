"""Where a fine-tuned model or checkpoint came from: its job, and the job's training file."""

from __future__ import annotations

from pathlib import Path

from tuneloop.store.files import FileStore
from tuneloop.store.jobs import Job, JobStore


def job_of(jobs: JobStore, model_id: str) -> Job | None:
    """The job that made ``model_id`` (a fine-tuned model or one of its checkpoints); None for a base model."""
    weights = jobs.trained_weights(model_id)
    return jobs.get(weights.job_id) if weights is not None else None


def training_file_of(jobs: JobStore, files: FileStore, model_id: str) -> Path | None:
    """The training file of the job that made ``model_id``, while it is still stored."""
    job = job_of(jobs, model_id)
    record = files.get(job.training_file) if job is not None else None
    return files.path(record) if record is not None else None
