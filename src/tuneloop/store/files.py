"""Files: uploaded training data and results, as OpenAI's Files API sees them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tuneloop.store.blobs import BlobStore
from tuneloop.store.db import files, insert_with_next_seq
from tuneloop.store.ids import random_id

PURPOSES = ("assistants", "batch", "fine-tune", "fine-tune-results", "vision", "user_data", "evals")


@dataclass
class FileRecord:
    """One stored file."""

    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    status: str
    created_at: int

    def to_openai(self) -> dict:
        """The OpenAI FileObject."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "status_details": None,
            "expires_at": None,
        }


def _record(row) -> FileRecord:
    return FileRecord(row.id, row.filename, row.purpose, row.bytes, row.sha256, row.status, row.created_at)


class FileStore:
    """Files table plus blob storage."""

    def __init__(self, engine: Engine, root: Path):
        self.engine = engine
        self.blobs = BlobStore(root / "blobs")

    def create(self, filename: str, purpose: str, stream: BinaryIO, max_bytes: int) -> FileRecord:
        """Store an upload and record it (status ``processed`` once stored)."""
        sha, size = self.blobs.put_stream(stream, max_bytes)
        return self._insert(filename, purpose, sha, size)

    def create_bytes(self, filename: str, purpose: str, data: bytes) -> FileRecord:
        """Store generated content (e.g. a job's results CSV)."""
        sha, size = self.blobs.put_bytes(data)
        return self._insert(filename, purpose, sha, size)

    def _insert(self, filename: str, purpose: str, sha: str, size: int) -> FileRecord:
        record = FileRecord(random_id("file-"), filename, purpose, size, sha, "processed", int(time.time()))
        insert_with_next_seq(self.engine, files, record.__dict__)
        return record

    def get(self, file_id: str) -> FileRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(files.select().where(files.c.id == file_id)).first()
        return _record(row) if row else None

    def list(self, purpose: str | None = None, order: str = "desc", after: str | None = None, limit: int = 10000):
        """A page of files and whether more follow."""
        query = files.select()
        if purpose:
            query = query.where(files.c.purpose == purpose)
        descending = order == "desc"
        with self.engine.connect() as conn:
            if after:
                cursor = conn.execute(sa.select(files.c.seq).where(files.c.id == after)).scalar()
                if cursor is not None:
                    query = query.where(files.c.seq < cursor if descending else files.c.seq > cursor)
            query = query.order_by(files.c.seq.desc() if descending else files.c.seq.asc()).limit(limit + 1)
            rows = conn.execute(query).all()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def path(self, record: FileRecord) -> Path:
        """Where a file's bytes are on disk."""
        return self.blobs.path(record.sha256)

    def delete(self, file_id: str) -> bool:
        """Forget a file; its blob goes when no other file shares it."""
        with self.engine.begin() as conn:
            row = conn.execute(files.select().where(files.c.id == file_id)).first()
            if row is None:
                return False
            conn.execute(files.delete().where(files.c.id == file_id))
            shared = conn.execute(sa.select(sa.func.count()).where(files.c.sha256 == row.sha256)).scalar_one()
        if not shared:
            self.blobs.delete(row.sha256)
        return True
