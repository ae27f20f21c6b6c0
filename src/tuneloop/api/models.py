"""``/v1/models``: base models from the catalog and fine-tuned models from succeeded jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from tuneloop.api.errors import APIError
from tuneloop.api.state import AppState, get_state
from tuneloop.errors import ModelNotFoundError

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


def _base(entry) -> dict:
    return {"id": entry.name, "object": "model", "created": entry.created, "owned_by": "tuneloop", "parent": None}


def _fine_tuned(row, org: str) -> dict:
    return {"id": row.id, "object": "model", "created": row.created_at, "owned_by": org, "parent": row.base}


@router.get("/models")
def list_models(state: State) -> dict:
    data = [_base(e) for e in state.catalog.entries()]
    data += [_fine_tuned(r, state.settings.org) for r in state.jobs.list_models()]
    return {"object": "list", "data": data}


def _not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


@router.get("/models/{model:path}")
def retrieve_model(state: State, model: str) -> dict:
    row = state.jobs.get_model(model)
    if row is not None:
        return _fine_tuned(row, state.settings.org)
    try:
        return _base(state.catalog.get(model))
    except ModelNotFoundError as exc:
        raise _not_found(model) from exc


@router.delete("/models/{model:path}")
def delete_model(state: State, model: str) -> dict:
    if state.jobs.get_model(model) is None:
        if model in state.catalog.names():
            raise APIError(403, f"`{model}` is a base model and cannot be deleted.", param="model")
        raise _not_found(model)
    state.jobs.delete_model(model)
    state.pool.forget(model)
    return {"id": model, "object": "model", "deleted": True}
