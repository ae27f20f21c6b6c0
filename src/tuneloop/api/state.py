"""What the API handlers share: settings, the database, the stores, the model catalog and the upstreams."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.engine import Engine

from tuneloop.api.upstream import Upstreams
from tuneloop.config import Settings
from tuneloop.engine.model_pool import ModelPool
from tuneloop.models import Catalog
from tuneloop.store.completions import CompletionStore
from tuneloop.store.db import make_engine
from tuneloop.store.files import FileStore
from tuneloop.store.jobs import JobStore


@dataclass
class AppState:
    """Long-lived objects of one server."""

    settings: Settings
    engine: Engine
    files: FileStore
    jobs: JobStore
    catalog: Catalog
    completions: CompletionStore
    pool: ModelPool | None = None
    upstreams: Upstreams = field(default_factory=Upstreams)  # gateway mode's (api/upstream.py)

    @classmethod
    def open(cls, settings: Settings) -> AppState:
        engine = make_engine(settings)
        files, jobs = FileStore(engine, settings.home), JobStore(engine)
        return cls(settings, engine, files, jobs, Catalog(settings), CompletionStore(engine))


def get_state(request: Request) -> AppState:
    """FastAPI dependency: the server's state."""
    return request.app.state.tuneloop
