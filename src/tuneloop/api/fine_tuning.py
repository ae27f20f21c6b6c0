"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, JsonValue

from tuneloop.api.errors import APIError, model_not_found, not_found
from tuneloop.api.protocol import RequestBody
from tuneloop.api.state import AppState, get_state
from tuneloop.errors import ModelNotFoundError
from tuneloop.jobs.spec import JobSpec, Metadata, Seed, Suffix, TrainingMethod
from tuneloop.jobs.validation import validate_job
from tuneloop.store.jobs import TERMINAL, Job, NewEvent
from tuneloop.train.hyperparameters import HyperparameterError, Hyperparameters

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


class RequestedHyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters as sent: unknown keys are refused here; the values are
    checked once, by ``Hyperparameters.checked`` (the bounds the CLI and ``TrainConfig`` share)."""

    model_config = ConfigDict(extra="forbid")
    n_epochs: JsonValue = "auto"
    batch_size: JsonValue = "auto"
    learning_rate_multiplier: JsonValue = "auto"


class RequestedDpoHyperparameters(RequestedHyperparameters):
    """OpenAI's DPO hyperparameters as sent: the supervised ones and ``beta``."""

    beta: JsonValue = "auto"


class Supervised(BaseModel):
    hyperparameters: RequestedHyperparameters | None = None


class Dpo(BaseModel):
    hyperparameters: RequestedDpoHyperparameters | None = None


class Method(BaseModel):
    """OpenAI's ``method``: ``supervised`` or ``dpo`` (``reinforcement`` is refused with a 400)."""

    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict | None = None

    def requested(self) -> tuple[RequestedHyperparameters | None, str]:
        """The hyperparameters given for this method type, and their parameter path."""
        if self.type == "reinforcement":
            raise APIError(400, "Method type 'reinforcement' is not supported; use 'supervised' or 'dpo'.",
                           param="method.type", code="invalid_value")  # fmt: skip
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None or self.reinforcement is not None:
            raise APIError(400, f"method.type is '{self.type}' but the method holds settings of another type; "
                           f"send them under 'method.{self.type}'.", param="method")  # fmt: skip
        section = self.dpo if self.type == "dpo" else self.supervised
        return (section.hyperparameters if section else None), f"method.{self.type}.hyperparameters"


class CreateJobRequest(RequestBody):
    """POST /fine_tuning/jobs body (plus tuneloop's ``training_method``: lora or full)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: RequestedHyperparameters | None = None
    method: Method | None = None
    suffix: Suffix | None = None
    seed: Seed | None = None
    metadata: Metadata | None = None
    integrations: list[dict] | None = None
    training_method: TrainingMethod = "lora"

    def spec(self) -> JobSpec:
        """The job this request asks for; an out-of-range hyperparameter is a 400 with the shared message
        (the legacy ``hyperparameters`` field serves when the method gives none)."""
        requested, param = self.hyperparameters, "hyperparameters"
        objective = self.method.type if self.method is not None else "supervised"
        if self.method is not None and (given := self.method.requested())[0] is not None:
            requested, param = given
        values = requested.model_dump(exclude_unset=True) if requested else {}
        if objective == "dpo":
            values.setdefault("beta", "auto")
        try:
            hyperparameters = Hyperparameters.checked(values)
        except HyperparameterError as exc:
            raise APIError(400, str(exc), param=f"{param}.{exc.name}", code="invalid_value") from exc
        return JobSpec(
            model=self.model,  # create_job sets base_model when it is a fine-tuned model or checkpoint
            training_file=self.training_file,
            validation_file=self.validation_file,
            method=self.training_method,
            objective=objective,  # type: ignore[arg-type]  (reinforcement was refused above)
            hyperparameters=hyperparameters,
            suffix=self.suffix,
            seed=self.seed if self.seed is not None else secrets.randbelow(2**31),
            metadata=self.metadata,
        )


def _job_or_404(state: AppState, job_id: str) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def _check_file(state: AppState, file_id: str | None, param: str) -> None:
    if file_id is None:
        return
    record = state.files.get(file_id)
    if record is None:
        raise APIError(400, f"invalid {param}: {file_id} does not exist", param=param)
    if record.purpose != "fine-tune":
        raise APIError(400, f"invalid {param}: {file_id} has purpose '{record.purpose}', not 'fine-tune'", param=param)


@router.post("/fine_tuning/jobs")
def create_job(state: State, body: CreateJobRequest) -> dict:
    spec = body.spec()  # first, as the request's other values are checked before anything else
    start = state.jobs.trained_weights(body.model)  # a fine-tuned model or checkpoint: trained further
    if start is None:
        try:
            state.catalog.get(body.model)
        except ModelNotFoundError as exc:  # the catalog's message lists the base models one can fine-tune
            raise model_not_found(body.model, str(exc)) from exc
    elif start.kind == "full" and spec.method == "lora":
        raise APIError(400, f"{body.model} is a full fine-tune: a job that starts from it trains every weight "
                       "(training_method 'full')", param="training_method", code="invalid_value")  # fmt: skip
    else:
        spec = spec.model_copy(update={"base_model": start.base})
    if body.integrations:
        raise APIError(400, "integrations are not supported", param="integrations")
    _check_file(state, body.training_file, "training_file")
    _check_file(state, body.validation_file, "validation_file")
    job = state.jobs.create(**spec.columns())
    start_validation(state, job.id)
    return job.to_openai(state.settings.org)


def start_validation(state: AppState, job_id: str) -> None:
    """Validate a job's files in the background (moves it to queued or failed)."""
    threading.Thread(
        target=validate_job,
        args=(state.jobs, state.files, state.catalog, job_id),
        daemon=True,
        name=f"validate-{job_id}",
    ).start()


@router.get("/fine_tuning/jobs")
def list_jobs(state: State, request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=1000)) -> dict:
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    jobs, has_more = state.jobs.list(after, limit, metadata or None)
    return {"object": "list", "data": [j.to_openai(state.settings.org) for j in jobs], "has_more": has_more}


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(state: State, job_id: str) -> dict:
    return _job_or_404(state, job_id).to_openai(state.settings.org)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(state: State, job_id: str) -> dict:
    job = _job_or_404(state, job_id)
    cancelled = NewEvent("Fine-tuning job cancelled")
    if job.status in TERMINAL or not state.jobs.finish(job_id, "cancelled", requested="cancel", event=cancelled):
        job = _job_or_404(state, job_id)
        raise APIError(409, f"Job {job_id} is already {job.status} and cannot be cancelled.", code="invalid_state")
    return _job_or_404(state, job_id).to_openai(state.settings.org)


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(state: State, job_id: str) -> dict:
    job = _job_or_404(state, job_id)
    paused = NewEvent("Fine-tuning job paused" + (" (checkpointing)" if job.status == "running" else ""))
    active = ("queued", "running")
    if not state.jobs.update(job_id, when_status=active, status="paused", requested="pause", event=paused):
        raise APIError(409, f"Job {job_id} is {job.status} and cannot be paused.", code="invalid_state")
    return _job_or_404(state, job_id).to_openai(state.settings.org)


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(state: State, job_id: str) -> dict:
    job = _job_or_404(state, job_id)
    if job.status != "paused":
        raise APIError(409, f"Job {job_id} is {job.status}, not paused.", code="invalid_state")
    stale = job.heartbeat_at is None or job.heartbeat_at < time.time() - state.settings.worker_stale_seconds
    if job.worker_id is not None and not stale:
        raise APIError(409, f"Job {job_id} is still saving its checkpoint; retry shortly.", code="invalid_state")
    resumed = NewEvent("Fine-tuning job resumed, moving job to queued state")
    if not state.jobs.update(job_id, when_status=("paused",), status="queued", worker_id=None, requested=None,
                             event=resumed):  # fmt: skip
        raise APIError(409, f"Job {job_id} changed state; retry.", code="invalid_state")
    return _job_or_404(state, job_id).to_openai(state.settings.org)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(state: State, job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)) -> dict:
    _job_or_404(state, job_id)
    data, has_more = state.jobs.list_events(job_id, after, limit)
    return {"object": "list", "data": data, "has_more": has_more}


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    state: State, job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=1000)
) -> dict:
    _job_or_404(state, job_id)
    data, has_more = state.jobs.list_checkpoints(job_id, after, limit)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
