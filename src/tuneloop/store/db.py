"""The SQL store: tables, versioned migrations, and the engine (SQLite WAL by default, PostgreSQL too).

Migrations are an ordered list of DDL scripts written for both SQLite and PostgreSQL; the applied
version is kept in ``schema_migrations``. Queries go through the SQLAlchemy Core tables below.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.types import TypeDecorator

from tuneloop.config import Settings


class JSONText(TypeDecorator):
    """JSON stored as TEXT (portable across SQLite and PostgreSQL)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect) -> str | None:
        return None if value is None else json.dumps(value)

    def process_result_value(self, value: str | None, dialect) -> Any:
        return None if value is None else json.loads(value)


metadata = sa.MetaData()

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("model", sa.Text, nullable=False),  # as requested: a catalog name, a fine-tuned model or checkpoint id
    sa.Column("base_model", sa.Text),  # the catalog model under ``model`` (NULL in rows from before migration 5)
    sa.Column("training_file", sa.String(64), nullable=False),
    sa.Column("validation_file", sa.String(64)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("hyperparameters", JSONText, nullable=False),  # as requested ("auto" or numbers)
    sa.Column("resolved", JSONText),  # resolved hyperparameters, once training started
    sa.Column("method", sa.String(16), nullable=False),  # lora | full
    sa.Column("objective", sa.String(16), nullable=False, server_default="supervised"),  # supervised | dpo
    sa.Column("suffix", sa.String(64)),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("metadata", JSONText),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.BigInteger),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("estimated_finish", sa.BigInteger),
    sa.Column("fine_tuned_model", sa.Text),
    sa.Column("trained_tokens", sa.BigInteger),
    sa.Column("error", JSONText),
    sa.Column("result_files", JSONText, nullable=False),
    sa.Column("requested", sa.String(16)),  # cancel | pause, set by the API, honoured by the worker
    sa.Column("worker_id", sa.String(64)),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("data", JSONText),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("step_number", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("metrics", JSONText),
    sa.Column("path", sa.Text, nullable=False),
)

fine_tuned_models = sa.Table(
    "fine_tuned_models",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # lora | full
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

stored_completions = sa.Table(
    "stored_completions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("metadata", JSONText, nullable=False),  # at most 16 string pairs
    sa.Column("request", JSONText, nullable=False),  # messages, tools, response_format, sampling
    sa.Column("response", JSONText, nullable=False),  # the chat.completion object as answered
    sa.Column("latency_ms", sa.Integer, nullable=False),
)

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE files (
        id VARCHAR(64) PRIMARY KEY, filename TEXT NOT NULL, purpose VARCHAR(32) NOT NULL,
        bytes BIGINT NOT NULL, sha256 VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL,
        created_at BIGINT NOT NULL, seq BIGINT NOT NULL
    );
    CREATE INDEX ix_files_sha256 ON files (sha256);
    CREATE TABLE jobs (
        id VARCHAR(64) PRIMARY KEY, seq BIGINT NOT NULL, model TEXT NOT NULL,
        training_file VARCHAR(64) NOT NULL, validation_file VARCHAR(64), status VARCHAR(32) NOT NULL,
        hyperparameters TEXT NOT NULL, resolved TEXT, method VARCHAR(16) NOT NULL, suffix VARCHAR(64),
        seed BIGINT NOT NULL, metadata TEXT, created_at BIGINT NOT NULL, started_at BIGINT,
        finished_at BIGINT, estimated_finish BIGINT, fine_tuned_model TEXT, trained_tokens BIGINT,
        error TEXT, result_files TEXT NOT NULL, requested VARCHAR(16), worker_id VARCHAR(64),
        heartbeat_at DOUBLE PRECISION, attempts INTEGER NOT NULL
    );
    CREATE INDEX ix_jobs_status ON jobs (status, seq);
    CREATE TABLE events (
        seq {autoincrement}, id VARCHAR(64) NOT NULL UNIQUE, job_id VARCHAR(64) NOT NULL,
        created_at BIGINT NOT NULL, level VARCHAR(8) NOT NULL, message TEXT NOT NULL,
        type VARCHAR(16) NOT NULL, data TEXT
    );
    CREATE INDEX ix_events_job ON events (job_id, seq);
    CREATE TABLE checkpoints (
        id VARCHAR(64) PRIMARY KEY, job_id VARCHAR(64) NOT NULL, step_number INTEGER NOT NULL,
        created_at BIGINT NOT NULL, model_id TEXT NOT NULL, metrics TEXT, path TEXT NOT NULL
    );
    CREATE INDEX ix_checkpoints_job ON checkpoints (job_id, step_number);
    CREATE TABLE fine_tuned_models (
        id TEXT PRIMARY KEY, base TEXT NOT NULL, job_id VARCHAR(64) NOT NULL, kind VARCHAR(16) NOT NULL,
        path TEXT NOT NULL, created_at BIGINT NOT NULL
    );
    """,
    # 2: list order numbers are unique (two concurrent inserts can no longer share one); existing
    # duplicates are renumbered first, keeping the order (through a table: SQLite's UPDATE would see
    # its own changes in a correlated subquery)
    """
    CREATE TABLE renumber_files AS SELECT id, (
        SELECT COUNT(*) FROM files f2 WHERE f2.seq < f.seq OR (f2.seq = f.seq AND f2.id <= f.id)
    ) AS new_seq FROM files f;
    UPDATE files SET seq = (SELECT new_seq FROM renumber_files r WHERE r.id = files.id);
    DROP TABLE renumber_files;
    CREATE UNIQUE INDEX ux_files_seq ON files (seq);
    CREATE TABLE renumber_jobs AS SELECT id, (
        SELECT COUNT(*) FROM jobs j2 WHERE j2.seq < j.seq OR (j2.seq = j.seq AND j2.id <= j.id)
    ) AS new_seq FROM jobs j;
    UPDATE jobs SET seq = (SELECT new_seq FROM renumber_jobs r WHERE r.id = jobs.id);
    DROP TABLE renumber_jobs;
    CREATE UNIQUE INDEX ux_jobs_seq ON jobs (seq)
    """,
    # 3: stored chat completions (``store: true``)
    """
    CREATE TABLE stored_completions (
        id VARCHAR(64) PRIMARY KEY, seq BIGINT NOT NULL, model TEXT NOT NULL, created_at BIGINT NOT NULL,
        metadata TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL, latency_ms INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX ux_stored_completions_seq ON stored_completions (seq);
    CREATE INDEX ix_stored_completions_model ON stored_completions (model, seq)
    """,
    # 4: OpenAI's method.type of a job (supervised | dpo); DPO's beta lives in its hyperparameters
    """
    ALTER TABLE jobs ADD COLUMN objective VARCHAR(16) NOT NULL DEFAULT 'supervised'
    """,
    # 5: the catalog model a job's weights belong to, when it starts from a fine-tuned model or checkpoint
    """
    ALTER TABLE jobs ADD COLUMN base_model TEXT
    """,
]


def insert_with_next_seq(engine: Engine, table: sa.Table, values: dict[str, Any], attempts: int = 20) -> int:
    """Insert a row numbered one past the table's highest ``seq``; retry if a concurrent insert took it."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.seq), 0))).scalar_one() + 1
                conn.execute(table.insert().values(**values, seq=seq))
            return seq
        except (sa.exc.IntegrityError, sa.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


def _enable_sqlite_wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(settings: Settings) -> Engine:
    """An engine for the configured database, migrated to the latest schema."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _enable_sqlite_wal)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine


def schema_version(engine: Engine) -> int:
    """The latest migration applied (0 for an empty database)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_migrations"):
            return 0
        return conn.execute(sa.text("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")).scalar_one()


def migrate(engine: Engine) -> int:
    """Apply pending migrations in order, each in its own transaction; return the new version."""
    autoincrement = "INTEGER PRIMARY KEY AUTOINCREMENT" if engine.dialect.name == "sqlite" else "BIGSERIAL PRIMARY KEY"
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT)")
        )
    current = schema_version(engine)
    for version, script in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        with engine.begin() as conn:
            if conn.execute(sa.text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": version}).first():
                continue  # applied concurrently by another process
            for statement in script.replace("{autoincrement}", autoincrement).split(";"):
                if statement.strip():
                    conn.execute(sa.text(statement))
            conn.execute(
                sa.text("INSERT INTO schema_migrations (version, applied_at) VALUES (:v, :t)"),
                {"v": version, "t": int(time.time())},
            )
    return len(MIGRATIONS)
