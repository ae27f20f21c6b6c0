"""Stored chat completions (``store: true``): list, retrieve, update metadata, delete, messages."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from tuneloop.api.errors import APIError, not_found
from tuneloop.api.protocol import (
    Deleted,
    StoredChatCompletion,
    StoredCompletionList,
    StoredMessage,
    StoredMessageList,
    UpdateMetadata,
)
from tuneloop.api.state import AppState, get_state
from tuneloop.store.completions import StoredCompletion

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]
_METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")


def _stored(record: StoredCompletion) -> StoredChatCompletion:
    return StoredChatCompletion.model_validate(record.to_openai())


def _get(state: AppState, completion_id: str) -> StoredCompletion:
    record = state.completions.get(completion_id)
    if record is None:
        raise not_found("stored chat completion", completion_id, param="completion_id")
    return record


@router.get("/chat/completions")
def list_stored(
    state: State,
    http: Request,
    model: str | None = None,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "asc",
) -> StoredCompletionList:
    """Filtered by ``model`` and ``metadata[key]=value`` pairs, as the official client sends them."""
    metadata = {m[1]: v for k, v in http.query_params.multi_items() if (m := _METADATA_KEY.match(k))}
    records, has_more = state.completions.list(model, metadata, after, limit, order)
    return StoredCompletionList.of([_stored(r) for r in records], has_more)


@router.get("/chat/completions/{completion_id}")
def retrieve_stored(state: State, completion_id: str) -> StoredChatCompletion:
    return _stored(_get(state, completion_id))


@router.post("/chat/completions/{completion_id}")
async def update_stored(state: State, completion_id: str, body: UpdateMetadata) -> StoredChatCompletion:
    record = await run_in_threadpool(state.completions.update_metadata, completion_id, body.metadata or {})
    if record is None:
        raise not_found("stored chat completion", completion_id, param="completion_id")
    return _stored(record)


@router.delete("/chat/completions/{completion_id}")
def delete_stored(state: State, completion_id: str) -> Deleted:
    if not state.completions.delete(completion_id):
        raise not_found("stored chat completion", completion_id, param="completion_id")
    return Deleted(id=completion_id, object="chat.completion.deleted")


@router.get("/chat/completions/{completion_id}/messages")
def stored_messages(
    state: State,
    completion_id: str,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "asc",
) -> StoredMessageList:
    """The request's messages, each with an id (``<completion id>-<index>``)."""
    record = _get(state, completion_id)
    messages = []
    for i, m in enumerate(record.request.get("messages", [])):
        content = m.get("content")
        if isinstance(content, list):  # text parts, joined as the model saw them
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append(StoredMessage(id=f"{completion_id}-{i}", role=m["role"], content=content,
                                      name=m.get("name"), tool_calls=m.get("tool_calls"),
                                      tool_call_id=m.get("tool_call_id")))  # fmt: skip
    if order == "desc":
        messages.reverse()
    if after is not None:
        ids = [m.id for m in messages]
        if after not in ids:
            raise APIError(400, f"No message '{after}' in stored chat completion '{completion_id}'.", param="after")
        messages = messages[ids.index(after) + 1 :]
    return StoredMessageList.of(messages[:limit], len(messages) > limit)
