"""A job's first stage: run the data validator on its files, then queue it or fail it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tuneloop.data.render import ChatRenderer
from tuneloop.data.validate import ValidationReport, validate_file
from tuneloop.models import load_tokenizer

if TYPE_CHECKING:
    from tuneloop.api.state import AppState

log = logging.getLogger(__name__)
MAX_LISTED = 5


def _failure(report: ValidationReport, param: str) -> dict:
    """OpenAI's job error for a file with validation errors."""
    if set(report.error_counts) == {"too_few_examples"}:
        return {
            "code": "invalid_n_examples",
            "message": f"Training file has {report.n_examples} example(s), but must have at least 10 examples",
            "param": param,
        }
    listed = "; ".join(
        f"line {e.line}: {e.code}: {e.message}" if e.line else f"{e.code}: {e.message}"
        for e in report.errors[:MAX_LISTED]
    )
    more = f" (and {report.n_errors - MAX_LISTED} more)" if report.n_errors > MAX_LISTED else ""
    kind = "training" if param == "training_file" else "validation"
    return {
        "code": f"invalid_{kind}_file",
        "message": f"The job failed due to an invalid {kind} file. {report.n_errors} error(s): {listed}{more}",
        "param": param,
    }


def validate_job(state: AppState, job_id: str) -> None:
    """Validate the training (and validation) file of a job in ``validating_files``."""
    jobs = state.jobs
    job = jobs.get(job_id)
    if job is None or job.status != "validating_files":
        return
    what = f"Validating training file: {job.training_file}"
    if job.validation_file:
        what += f" and validation file: {job.validation_file}"
    jobs.add_event(job_id, what)
    try:
        entry = state.catalog.ensure_ready(state.catalog.get(job.model))
        renderer = ChatRenderer(load_tokenizer(entry))
        for file_id, param in ((job.training_file, "training_file"), (job.validation_file, "validation_file")):
            if file_id is None:
                continue
            record = state.files.get(file_id)
            if record is None:
                error = {"code": f"invalid_{param}", "message": f"{file_id} was deleted", "param": param}
                _fail(state, job_id, error)
                return
            report = validate_file(state.files.path(record), renderer, entry.context_length, entry.parameter_count)
            if param == "validation_file" and set(report.error_counts) == {"too_few_examples"}:
                continue  # a small validation file is fine
            if not report.ok:
                _fail(state, job_id, _failure(report, param))
                return
            if report.format not in ("chat", "completion"):
                message = f"Invalid file format: {file_id} is in the {report.format} format, but the job is supervised"
                _fail(state, job_id, {"code": f"invalid_{param}", "message": message, "param": param})
                return
    except Exception as exc:  # never leave a job in validating_files
        log.exception("validation of %s crashed", job_id)
        _fail(state, job_id, {"code": "validation_error", "message": f"{type(exc).__name__}: {exc}", "param": None})
        return
    if jobs.update(job_id, when_status=("validating_files",), status="queued"):
        jobs.add_event(job_id, "Files validated, moving job to queued state")


def _fail(state: AppState, job_id: str, error: dict) -> None:
    if state.jobs.finish(job_id, "failed", error=error):
        state.jobs.add_event(job_id, error["message"], level="error")
