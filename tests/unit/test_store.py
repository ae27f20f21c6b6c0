"""The SQL store: migrations, files and blobs, and the job claim protocol, on SQLite and PostgreSQL."""

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


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest):
    """The store's engine on each supported database (PostgreSQL skips where none can be started)."""
    if request.param == "postgresql":
        request.getfixturevalue("postgres_url")  # sets TUNELOOP_DATABASE_URL for make_engine
    engine = make_engine(get_settings())
    yield engine
    engine.dispose()


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
    assert {"files", "jobs", "events", "checkpoints", "fine_tuned_models", "stored_completions",
            "schema_migrations"} <= tables  # fmt: skip
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"


def test_migration_renumbers_duplicate_list_order(engine):
    """Databases written before migration 2 may hold duplicate seq numbers; the upgrade keeps the order."""
    jobs = JobStore(engine)
    ids = [new_job(jobs) for _ in range(3)]
    with engine.begin() as conn:  # back to the schema of version 1, with duplicate seq numbers
        conn.execute(sa.text("DROP INDEX ux_jobs_seq"))
        conn.execute(sa.text("DELETE FROM schema_migrations WHERE version >= 2"))
        conn.execute(sa.text("DROP INDEX ux_files_seq"))
        conn.execute(sa.text("DROP TABLE stored_completions"))  # migration 3
        conn.execute(sa.text("ALTER TABLE jobs DROP COLUMN objective"))  # migration 4
        conn.execute(sa.text("ALTER TABLE jobs DROP COLUMN base_model"))  # migration 5
        conn.execute(sa.text("UPDATE jobs SET seq = 7 WHERE id != :id"), {"id": ids[0]})
    migrate(engine)
    listed = [j.id for j in jobs.list()[0]]
    assert len({j.seq for j in jobs.list()[0]}) == 3 and listed[-1] == ids[0]


def test_concurrent_creates_get_distinct_list_positions(engine):
    ids: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        local = JobStore(make_engine(get_settings()))
        for _ in range(8):
            job_id = new_job(local)
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listed, _ = JobStore(engine).list(limit=100)
    assert sorted(j.id for j in listed) == sorted(ids) and len({j.seq for j in listed}) == 32
    page, more = JobStore(engine).list(limit=10)
    rest, _ = JobStore(engine).list(after=page[-1].id, limit=100)
    assert more and [j.id for j in page + rest] == [j.id for j in listed]  # pagination loses nothing


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
    ids = [new_job(jobs) for _ in range(24)]
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        local = JobStore(make_engine(get_settings()))
        while (job := local.claim(name, stale_after=60)) is not None:
            with lock:
                claimed.append((job.id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
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


def test_only_one_worker_takes_over_a_stale_job(engine):
    jobs = JobStore(engine)
    job_id = new_job(jobs)
    jobs.claim("dead", stale_after=60)
    jobs.update(job_id, heartbeat_at=time.time() - 120)
    winners: list[str] = []
    barrier = threading.Barrier(5)

    def worker(name: str) -> None:
        local = JobStore(make_engine(get_settings()))
        barrier.wait()
        if local.claim(name, stale_after=60) is not None:
            winners.append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and jobs.get(job_id).worker_id == winners[0] and jobs.get(job_id).attempts == 2


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
