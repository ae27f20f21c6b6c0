"""Fine-tuning jobs, their events and checkpoints, and the fine-tuned models they produce.

State changes that race (a worker claiming a job, the API cancelling it) are single conditional
UPDATEs checked by row count, which is correct on SQLite and on PostgreSQL alike. A status change
and the event that announces it are written in one transaction, so whoever sees one sees both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tuneloop.store.db import checkpoints, events, fine_tuned_models, insert_with_next_seq, jobs
from tuneloop.store.ids import random_id

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")


@dataclass
class Job:
    """A row of the jobs table."""

    id: str
    seq: int
    model: str  # as requested: a catalog name, or the fine-tuned model / checkpoint id the job starts from
    base_model: str | None  # the catalog model under ``model`` (None in jobs from before it was recorded)
    training_file: str
    validation_file: str | None
    status: str
    hyperparameters: dict[str, Any]
    resolved: dict[str, Any] | None
    method: str
    objective: str  # OpenAI's method.type: supervised | dpo
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    estimated_finish: int | None
    fine_tuned_model: str | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    result_files: list[str]
    requested: str | None
    worker_id: str | None
    heartbeat_at: float | None
    attempts: int

    @property
    def base(self) -> str:
        """The catalog model this job's weights belong to."""
        return self.base_model or self.model

    def to_openai(self, org: str) -> dict[str, Any]:
        """The OpenAI FineTuningJob object (``hyperparameters`` without DPO's beta, ``method`` with it)."""
        hp = {k: v for k, v in self.hyperparameters.items() if k != "beta"}
        if self.resolved:
            hp.update({k: self.resolved[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")})
        method_hp = dict(hp)
        if self.objective == "dpo":
            method_hp["beta"] = (self.resolved or {}).get("beta") or self.hyperparameters.get("beta", "auto")
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "error": self.error,
            "fine_tuned_model": self.fine_tuned_model,
            "finished_at": self.finished_at,
            "hyperparameters": hp,
            "model": self.model,
            "organization_id": f"org-{org}",
            "result_files": self.result_files,
            "seed": self.seed,
            "status": self.status,
            "trained_tokens": self.trained_tokens,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "integrations": None,
            "estimated_finish": self.estimated_finish,
            "method": {"type": self.objective, self.objective: {"hyperparameters": method_hp}},
            "metadata": self.metadata,
            "user_provided_suffix": self.suffix,
            "training_method": self.method,
        }


def _job(row) -> Job:
    return Job(**row._mapping)


@dataclass(frozen=True)
class TrainedWeights:
    """A fine-tuned model's or checkpoint's weights: the catalog model they belong to, ``lora`` (an
    adapter folder) or ``full`` (a model folder), and the job that made them."""

    id: str
    base: str
    kind: str
    path: Path
    job_id: str


class NewEvent(NamedTuple):
    """A job event to record together with a status change."""

    message: str
    level: str = "info"
    data: dict | None = None


class JobStore:
    """All job-related reads and writes."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- jobs ------------------------------------------------------------------------------------
    def create(
        self,
        *,
        model: str,
        training_file: str,
        validation_file: str | None,
        hyperparameters: dict[str, Any],
        method: str,
        suffix: str | None,
        seed: int,
        metadata: dict[str, str] | None,
        objective: str = "supervised",
        base_model: str | None = None,
    ) -> Job:
        """Insert a new job in ``validating_files``."""
        job_id = random_id("ftjob-")
        now = int(time.time())
        insert_with_next_seq(
            self.engine, jobs,
            dict(
                id=job_id, model=model, base_model=base_model or model, training_file=training_file,
                validation_file=validation_file, status="validating_files", hyperparameters=hyperparameters,
                method=method, objective=objective, suffix=suffix, seed=seed, metadata=metadata, created_at=now,
                result_files=[], attempts=0,
            ),
        )  # fmt: skip
        self.add_event(job_id, f"Created fine-tuning job: {job_id}")
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(jobs.select().where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def list(self, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None):
        """Newest first; returns (jobs, has_more). Metadata filters are applied in Python."""
        query = jobs.select().order_by(jobs.c.seq.desc())
        with self.engine.connect() as conn:
            if after:
                cursor = conn.execute(sa.select(jobs.c.seq).where(jobs.c.id == after)).scalar()
                if cursor is not None:
                    query = query.where(jobs.c.seq < cursor)
            rows = [_job(r) for r in conn.execute(query)]
        if metadata:
            rows = [j for j in rows if all((j.metadata or {}).get(k) == v for k, v in metadata.items())]
        return rows[:limit], len(rows) > limit

    def update(
        self, job_id: str, when_status: tuple[str, ...] | None = None, event: NewEvent | None = None, **values: Any
    ) -> bool:
        """Set columns, optionally only if the job is in one of ``when_status``; True if a row changed.
        ``event`` is added in the same transaction when the row changed."""
        query = jobs.update().where(jobs.c.id == job_id)
        if when_status is not None:
            query = query.where(jobs.c.status.in_(when_status))
        with self.engine.begin() as conn:
            changed = conn.execute(query.values(**values)).rowcount == 1
            if changed and event is not None:
                conn.execute(_event_insert(job_id, event.message, event.level, "message", event.data))
            return changed

    def finish(
        self, job_id: str, status: str, error: dict | None = None, event: NewEvent | None = None, **values: Any
    ) -> bool:
        """Move a non-terminal job to a terminal status (releasing any worker's hold), recording
        ``event`` in the same transaction, so a client that sees the status also sees the event."""
        values = {"worker_id": None, "requested": None, **values}
        return self.update(
            job_id, when_status=ACTIVE, event=event, status=status, error=error, finished_at=int(time.time()), **values
        )

    def active_using(self, file_id: str) -> list[tuple[str, str]]:
        """(id, status) of the jobs not yet ended that train or validate on ``file_id``."""
        uses = sa.or_(jobs.c.training_file == file_id, jobs.c.validation_file == file_id)
        query = sa.select(jobs.c.id, jobs.c.status).where(uses, jobs.c.status.in_(ACTIVE)).order_by(jobs.c.seq)
        with self.engine.connect() as conn:
            return [(r.id, r.status) for r in conn.execute(query)]

    def claim(self, worker_id: str, stale_after: float) -> Job | None:
        """Atomically take the oldest queued job, or a running job whose worker stopped heartbeating."""
        now = time.time()
        claimable = sa.or_(
            sa.and_(jobs.c.status == "queued", jobs.c.worker_id.is_(None)),
            sa.and_(jobs.c.status == "running", jobs.c.heartbeat_at < now - stale_after),
        )
        for _ in range(5):
            with self.engine.begin() as conn:
                # FOR UPDATE SKIP LOCKED on PostgreSQL: concurrent workers pick different jobs instead of
                # queueing on one row (SQLite serialises writers and ignores it); the UPDATE below is
                # conditional anyway, so a job can never be taken twice
                candidate = sa.select(jobs.c.id).where(claimable).order_by(jobs.c.seq).limit(1)
                job_id = conn.execute(candidate.with_for_update(skip_locked=True)).scalar()
                if job_id is None:
                    return None
                taken = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, claimable)
                    .values(
                        status="running", worker_id=worker_id, heartbeat_at=now, attempts=jobs.c.attempts + 1,
                        started_at=sa.func.coalesce(jobs.c.started_at, int(now)), requested=None,
                    )
                ).rowcount  # fmt: skip
            if taken == 1:
                return self.get(job_id)
        return None

    def heartbeat(self, job_id: str, worker_id: str) -> str | None:
        """Refresh the heartbeat of a job this worker holds; return its status (None: no longer ours)."""
        with self.engine.begin() as conn:
            query = jobs.update().where(
                jobs.c.id == job_id, jobs.c.worker_id == worker_id, jobs.c.status.in_(("running", "paused"))
            )
            if conn.execute(query.values(heartbeat_at=time.time())).rowcount != 1:
                return None
            return conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()

    def release(self, job_id: str, worker_id: str) -> None:
        """A worker lets go of a job it holds (after a pause completed)."""
        self.update_where(job_id, worker_id=worker_id, values={"worker_id": None, "requested": None})

    def update_where(self, job_id: str, *, worker_id: str, values: dict[str, Any]) -> bool:
        """Update a job only while ``worker_id`` holds it."""
        with self.engine.begin() as conn:
            query = jobs.update().where(jobs.c.id == job_id, jobs.c.worker_id == worker_id)
            return conn.execute(query.values(**values)).rowcount == 1

    # -- events ----------------------------------------------------------------------------------
    def add_event(
        self, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(_event_insert(job_id, message, level, type, data))

    def delete_metrics_after(self, job_id: str, step: int) -> int:
        """Forget the metrics events of steps after ``step`` (a resumed run records them again); return
        how many went."""
        query = sa.select(events.c.seq, events.c.data).where(events.c.job_id == job_id, events.c.type == "metrics")
        with self.engine.begin() as conn:
            stale = [r.seq for r in conn.execute(query) if (r.data or {}).get("step", 0) > step]
            if stale:
                conn.execute(events.delete().where(events.c.seq.in_(stale)))
        return len(stale)

    def list_events(self, job_id: str, after: str | None = None, limit: int = 20):
        """Newest first; returns (events, has_more)."""
        query = events.select().where(events.c.job_id == job_id).order_by(events.c.seq.desc())
        with self.engine.connect() as conn:
            if after:
                cursor = conn.execute(sa.select(events.c.seq).where(events.c.id == after)).scalar()
                if cursor is not None:
                    query = query.where(events.c.seq < cursor)
            rows = conn.execute(query.limit(limit + 1)).all()
        data = [
            {
                "object": "fine_tuning.job.event", "id": r.id, "created_at": r.created_at, "level": r.level,
                "message": r.message, "type": r.type, "data": r.data,
            }
            for r in rows[:limit]
        ]  # fmt: skip
        return data, len(rows) > limit

    # -- checkpoints -----------------------------------------------------------------------------
    def add_checkpoint(self, job_id: str, step: int, model_id: str, metrics: dict, path: str) -> str:
        checkpoint_id = random_id("ftckpt_")
        with self.engine.begin() as conn:
            conn.execute(
                checkpoints.insert().values(
                    id=checkpoint_id, job_id=job_id, step_number=step, created_at=int(time.time()),
                    model_id=model_id, metrics=metrics, path=path,
                )
            )  # fmt: skip
        return checkpoint_id

    def delete_checkpoints_except(self, job_id: str, keep_paths: set[str]) -> None:
        """Forget checkpoints whose folders the trainer has rotated away."""
        with self.engine.begin() as conn:
            rows = conn.execute(checkpoints.select().where(checkpoints.c.job_id == job_id)).all()
            gone = [r.id for r in rows if r.path not in keep_paths]
            if gone:
                conn.execute(checkpoints.delete().where(checkpoints.c.id.in_(gone)))

    def list_checkpoints(self, job_id: str, after: str | None = None, limit: int = 10):
        """Newest first; returns (checkpoints, has_more)."""
        query = checkpoints.select().where(checkpoints.c.job_id == job_id).order_by(checkpoints.c.step_number.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if after:
            ids = [r.id for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else rows
        data = [
            {
                "object": "fine_tuning.job.checkpoint", "id": r.id, "created_at": r.created_at,
                "fine_tuned_model_checkpoint": r.model_id, "fine_tuning_job_id": job_id,
                "step_number": r.step_number, "metrics": r.metrics,
            }
            for r in rows[:limit]
        ]  # fmt: skip
        return data, len(rows) > limit

    def checkpoint_by_model_id(self, model_id: str):
        with self.engine.connect() as conn:
            return conn.execute(checkpoints.select().where(checkpoints.c.model_id == model_id)).first()

    def trained_weights(self, model_id: str) -> TrainedWeights | None:
        """The weights behind a fine-tuned model or checkpoint id; None for any other name (a base model)
        and for a checkpoint whose folder is gone."""
        row = self.get_model(model_id)
        if row is not None:
            return TrainedWeights(model_id, row.base, row.kind, Path(row.path), row.job_id)
        ckpt = self.checkpoint_by_model_id(model_id)
        job = self.get(ckpt.job_id) if ckpt is not None else None
        if job is None or not Path(ckpt.path).is_dir():
            return None
        kind = "lora" if (Path(ckpt.path) / "adapter_config.json").is_file() else "full"
        return TrainedWeights(model_id, job.base, kind, Path(ckpt.path), job.id)

    # -- fine-tuned models -----------------------------------------------------------------------
    def add_model(self, model_id: str, base: str, job_id: str, kind: str, path: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                fine_tuned_models.insert().values(
                    id=model_id, base=base, job_id=job_id, kind=kind, path=path, created_at=int(time.time())
                )
            )

    def list_models(self) -> list:
        with self.engine.connect() as conn:
            return conn.execute(fine_tuned_models.select().order_by(fine_tuned_models.c.created_at)).all()

    def get_model(self, model_id: str):
        with self.engine.connect() as conn:
            return conn.execute(fine_tuned_models.select().where(fine_tuned_models.c.id == model_id)).first()

    def delete_model(self, model_id: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(fine_tuned_models.delete().where(fine_tuned_models.c.id == model_id)).rowcount == 1


def _event_insert(job_id: str, message: str, level: str, type: str, data: dict | None):
    return events.insert().values(
        id=random_id("ftevent-"), job_id=job_id, created_at=int(time.time()), level=level,
        message=message, type=type, data=data if data is not None else {},
    )  # fmt: skip
