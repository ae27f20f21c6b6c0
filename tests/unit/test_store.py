"""The SQL store: migrations, files and blobs, and the job claim protocol."""

from __future__ import annotations

import io
import threading
import time

import pytest
import sqlalchemy as sa

from tuneloop.config import get_settings
from tuneloop.store.blobs import TooLargeError
from tuneloop.store.db import MIGRATIONS, make_engine, migrate, schema_version
from tuneloop.store.files import FileStore
from tuneloop.store.jobs import JobStore


@pytest.fixture
def engine():
    return make_engine(get_settings())


def new_job(jobs: JobStore, status: str = "queued") -> str:
    job = jobs.create(
        model="m", training_file="file-x", validation_file=None, hyperparameters={}, method="lora",
        suffix=None, seed=1, metadata=None,
    )  # fmt: skip
    jobs.update(job.id, status=status)
    return job.id


def test_migrations_from_empty_database(engine):
    assert schema_version(engine) == len(MIGRATIONS)
    assert migrate(engine) == len(MIGRATIONS)  # idempotent
    tables = set(sa.inspect(engine).get_table_names())
    assert {"files", "jobs", "events", "checkpoints", "fine_tuned_models", "schema_migrations"} <= tables
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"


def test_files_are_content_addressed(engine, tuneloop_home):
    store = FileStore(engine, tuneloop_home)
    a = store.create("a.jsonl", "fine-tune", io.BytesIO(b"same bytes"), max_bytes=100)
    b = store.create("b.jsonl", "fine-tune", io.BytesIO(b"same bytes"), max_bytes=100)
    assert a.sha256 == b.sha256 and store.path(a) == store.path(b)
    store.delete(a.id)
    assert store.path(b).read_bytes() == b"same bytes"  # still referenced by b
    store.delete(b.id)
    assert not store.path(b).exists()


def test_upload_over_limit_keeps_nothing(engine, tuneloop_home):
    store = FileStore(engine, tuneloop_home)
    with pytest.raises(TooLargeError):
        store.create("big.jsonl", "fine-tune", io.BytesIO(b"x" * 101), max_bytes=100)
    assert store.list()[0] == []
    assert [p.name for p in (tuneloop_home / "blobs").iterdir()] == []


def test_concurrent_claims_never_share_a_job(engine):
    jobs = JobStore(engine)
    ids = [new_job(jobs) for _ in range(12)]
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        local = JobStore(make_engine(get_settings()))
        while (job := local.claim(name, stale_after=60)) is not None:
            with lock:
                claimed.append((job.id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in claimed) == sorted(ids)
    assert all(jobs.get(j).attempts == 1 and jobs.get(j).status == "running" for j in ids)


def test_stale_job_is_taken_over_and_old_worker_loses_it(engine):
    jobs = JobStore(engine)
    job_id = new_job(jobs)
    assert jobs.claim("old", stale_after=60).id == job_id
    assert jobs.claim("new", stale_after=60) is None  # fresh heartbeat: nobody else may take it
    assert jobs.heartbeat(job_id, "old") == "running"
    jobs.update(job_id, heartbeat_at=time.time() - 120)
    taken = jobs.claim("new", stale_after=60)
    assert taken.id == job_id and taken.attempts == 2 and taken.worker_id == "new"
    assert jobs.heartbeat(job_id, "old") is None


def test_cancel_releases_the_worker(engine):
    jobs = JobStore(engine)
    job_id = new_job(jobs)
    jobs.claim("w", stale_after=60)
    assert jobs.finish(job_id, "cancelled", requested="cancel")
    assert jobs.heartbeat(job_id, "w") is None
    assert not jobs.finish(job_id, "failed")  # terminal states are final


def test_events_paginate_newest_first(engine):
    jobs = JobStore(engine)
    job_id = new_job(jobs)
    for i in range(5):
        jobs.add_event(job_id, f"event {i}")
    page, more = jobs.list_events(job_id, limit=2)
    assert [e["message"] for e in page] == ["event 4", "event 3"] and more
    page, more = jobs.list_events(job_id, after=page[-1]["id"], limit=10)
    assert [e["message"] for e in page] == ["event 2", "event 1", "event 0", f"Created fine-tuning job: {job_id}"]
    assert not more
