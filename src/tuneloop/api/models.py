"""``/v1/models``: base models from the catalog and fine-tuned models from succeeded jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from tuneloop.api.errors import APIError, model_not_found
from tuneloop.api.protocol import Deleted, ModelCard, ModelList
from tuneloop.api.state import AppState, get_state
from tuneloop.errors import ModelNotFoundError

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


def _base(entry) -> ModelCard:
    return ModelCard(id=entry.name, created=entry.created, owned_by="tuneloop")


def _fine_tuned(row, org: str) -> ModelCard:
    return ModelCard(id=row.id, created=row.created_at, owned_by=org, parent=row.base)


@router.get("/models")
def list_models(state: State) -> ModelList:
    data = [_base(e) for e in state.catalog.entries()]
    data += [_fine_tuned(r, state.settings.org) for r in state.jobs.list_models()]
    return ModelList(data=data)


@router.get("/models/{model:path}")
def retrieve_model(state: State, model: str) -> ModelCard:
    row = state.jobs.get_model(model)
    if row is not None:
        return _fine_tuned(row, state.settings.org)
    ckpt = state.jobs.checkpoint_by_model_id(model)  # a checkpoint serves as a model: it is one
    job = state.jobs.get(ckpt.job_id) if ckpt is not None else None
    if job is not None and state.pool.exists(model):
        return ModelCard(id=model, created=ckpt.created_at, owned_by=state.settings.org, parent=job.model)
    try:
        return _base(state.catalog.get(model))
    except ModelNotFoundError as exc:
        raise model_not_found(model) from exc


@router.delete("/models/{model:path}")
def delete_model(state: State, model: str) -> Deleted:
    if state.jobs.get_model(model) is None:
        if model in state.catalog.names():
            raise APIError(403, f"`{model}` is a base model and cannot be deleted.", param="model")
        raise model_not_found(model)
    state.jobs.delete_model(model)
    state.pool.forget(model)
    return Deleted(id=model, object="model")
