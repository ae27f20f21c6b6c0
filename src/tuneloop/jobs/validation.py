"""A job's first stage: run the data validator on its files, then queue it or fail it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tuneloop.data.render import ChatRenderer
from tuneloop.data.validate import ValidationReport, validate_file
from tuneloop.models import Catalog, load_tokenizer
from tuneloop.store.files import FileStore
from tuneloop.store.jobs import JobStore, NewEvent

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


def validate_job(jobs: JobStore, files: FileStore, catalog: Catalog, job_id: str) -> None:
    """Validate the training (and validation) file of a job in ``validating_files``."""
    job = jobs.get(job_id)
    if job is None or job.status != "validating_files":
        return
    what = f"Validating training file: {job.training_file}"
    if job.validation_file:
        what += f" and validation file: {job.validation_file}"
    jobs.add_event(job_id, what)
    try:
        error = _first_error(files, catalog, job.base, job.training_file, job.validation_file, job.objective)
    except Exception as exc:  # never leave a job in validating_files
        log.exception("validation of %s crashed", job_id)
        error = {"code": "validation_error", "message": f"{type(exc).__name__}: {exc}", "param": None}
    if error is not None:
        jobs.finish(job_id, "failed", error=error, event=NewEvent(error["message"], "error"))
    else:
        jobs.update(job_id, when_status=("validating_files",), status="queued",
                    event=NewEvent("Files validated, moving job to queued state"))  # fmt: skip


def file_validator(catalog: Catalog, model: str, max_tokens: int | None = None) -> Callable[[Path], ValidationReport]:
    """The data validator as ``model`` trains: its tokenizer and chat template (loaded once, the model made
    ready first), its context (or ``max_tokens``, if lower) as the limit, its size for the time estimate."""
    entry = catalog.ensure_ready(catalog.get(model))
    renderer = ChatRenderer(load_tokenizer(entry))
    limit = min(max_tokens, entry.context_length) if max_tokens else entry.context_length
    return lambda path: validate_file(path, renderer, limit, entry.parameter_count)


def _first_error(
    files: FileStore,
    catalog: Catalog,
    model: str,
    training_file: str,
    validation_file: str | None,
    objective: str = "supervised",
) -> dict | None:
    """The job error of the first file that fails validation (or is in the wrong format for the job's
    ``objective``: a DPO job needs preference pairs), or None when both pass."""
    validate = file_validator(catalog, model)
    for file_id, param in ((training_file, "training_file"), (validation_file, "validation_file")):
        if file_id is None:
            continue
        record = files.get(file_id)
        if record is None:
            return {"code": f"invalid_{param}", "message": f"{file_id} was deleted", "param": param}
        report = validate(files.path(record))
        if param == "validation_file" and set(report.error_counts) == {"too_few_examples"}:
            continue  # a small validation file is fine
        if not report.ok:
            return _failure(report, param)
        if (message := _format_problem(file_id, report.format, objective)) is not None:
            return {"code": f"invalid_{param}", "message": message, "param": param}
    return None


def _format_problem(file_id: str, fmt: str | None, objective: str) -> str | None:
    """Why a file's format does not suit the job, or None when it does."""
    if objective == "dpo" and fmt != "preference":
        return (f"Invalid file format: {file_id} is in the {fmt} format, but the job is dpo: each line must be a "
                "preference pair {\"input\": {\"messages\": [...]}, \"preferred_output\": [{assistant message}], "
                "\"non_preferred_output\": [{assistant message}]}")  # fmt: skip
    if objective != "dpo" and fmt not in ("chat", "completion"):
        hint = " (preference pairs train with method type 'dpo')" if fmt == "preference" else ""
        return f"Invalid file format: {file_id} is in the {fmt} format, but the job is supervised{hint}"
    return None
