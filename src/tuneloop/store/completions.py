"""Stored chat completions (``store: true``): a request, its answer and metadata, as OpenAI lists them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tuneloop.store.db import insert_with_next_seq, stored_completions


@dataclass
class StoredCompletion:
    """One stored completion."""

    id: str
    model: str
    created_at: int
    metadata: dict[str, str]
    request: dict[str, Any]
    response: dict[str, Any]
    latency_ms: int

    def to_openai(self) -> dict[str, Any]:
        """The ``chat.completion`` object as answered, with its metadata (OpenAI's stored shape)."""
        return {**self.response, "metadata": self.metadata}


def _record(row) -> StoredCompletion:
    return StoredCompletion(row.id, row.model, row.created_at, row.metadata or {}, row.request, row.response,
                            row.latency_ms)  # fmt: skip


class CompletionStore:
    """The stored completions of one database."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, response: dict[str, Any], request: dict[str, Any], metadata: dict[str, str], latency_ms: int) -> None:
        """Store an answered completion (its id is the response's)."""
        values = {
            "id": response["id"], "model": response["model"], "created_at": response.get("created", int(time.time())),
            "metadata": metadata, "request": request, "response": response, "latency_ms": latency_ms,
        }  # fmt: skip
        insert_with_next_seq(self.engine, stored_completions, values)

    def get(self, completion_id: str) -> StoredCompletion | None:
        with self.engine.connect() as conn:
            row = conn.execute(stored_completions.select().where(stored_completions.c.id == completion_id)).first()
        return _record(row) if row else None

    def list(
        self, model: str | None = None, metadata: dict[str, str] | None = None, after: str | None = None,
        limit: int = 20, order: str = "asc",
    ) -> tuple[list[StoredCompletion], bool]:  # fmt: skip
        """A page of completions (filtered by model and metadata pairs) and whether more follow."""
        t = stored_completions
        query = t.select()
        if model:
            query = query.where(t.c.model == model)
        descending = order == "desc"
        found: list[StoredCompletion] = []
        with self.engine.connect() as conn:
            if after:
                cursor = conn.execute(sa.select(t.c.seq).where(t.c.id == after)).scalar()
                if cursor is not None:
                    query = query.where(t.c.seq < cursor if descending else t.c.seq > cursor)
            query = query.order_by(t.c.seq.desc() if descending else t.c.seq.asc())
            for row in conn.execute(query):  # metadata is JSON text: filtered here, in order
                record = _record(row)
                if all(record.metadata.get(k) == v for k, v in (metadata or {}).items()):
                    found.append(record)
                    if len(found) > limit:
                        break
        return found[:limit], len(found) > limit

    def update_metadata(self, completion_id: str, metadata: dict[str, str]) -> StoredCompletion | None:
        """Replace a completion's metadata; None when there is no such completion."""
        t = stored_completions
        with self.engine.begin() as conn:
            if conn.execute(t.update().where(t.c.id == completion_id).values(metadata=metadata)).rowcount != 1:
                return None
        return self.get(completion_id)

    def delete(self, completion_id: str) -> bool:
        with self.engine.begin() as conn:
            t = stored_completions
            return conn.execute(t.delete().where(t.c.id == completion_id)).rowcount == 1
