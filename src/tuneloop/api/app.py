"""The FastAPI application: OpenAI-compatible Files, Fine-tuning, Models and Chat Completions."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tuneloop import __version__
from tuneloop.api import chat, completions, files, fine_tuning, models
from tuneloop.api.errors import error_response, install_error_handlers
from tuneloop.api.state import AppState
from tuneloop.config import Settings
from tuneloop.engine.model_pool import EngineOptions, ModelPool
from tuneloop.jobs.worker import Worker

log = logging.getLogger(__name__)


def create_app(settings: Settings, run_worker: bool = False) -> FastAPI:
    """Build the app; with ``run_worker`` the server also runs one job worker in a thread."""
    state = AppState.open(settings)
    options = EngineOptions(
        settings.max_batch, settings.max_queued_requests, settings.max_adapters,
        weights=settings.serve_weights, activations=settings.serve_activations,
        adaptive_threads=settings.adaptive_threads,
    )  # fmt: skip
    state.pool = ModelPool(state.catalog, state.jobs, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for job in state.jobs.list(limit=10_000)[0]:  # validations interrupted by a restart
            if job.status == "validating_files":
                fine_tuning.start_validation(state, job.id)
        worker = None
        if run_worker:
            worker = Worker(settings)
            thread = threading.Thread(target=worker.run_forever, name="tuneloop-worker", daemon=True)
            thread.start()
        yield
        if worker is not None:
            worker.shutdown.set()
            thread.join(timeout=90)
        for engine in state.pool.engines().values():
            engine.close(cancel=True)

    app = FastAPI(title="tuneloop", version=__version__, lifespan=lifespan)
    app.state.tuneloop = state
    install_error_handlers(app)

    app.add_middleware(RequestGuard, settings=settings)

    @app.get("/health")
    @app.get("/v1/health")
    def health() -> JSONResponse:
        engines = {
            name: {
                "active": len(e.active),
                "waiting": len(e.waiting),
                "decode_steps": e.steps,
                "decode_seconds": round(e.decode_seconds, 3),  # in the model's forward passes
                "prefill_seconds": round(e.prefill_seconds, 3),
                "prompt_tokens": e.prompt_tokens,
                "cached_prompt_tokens": e.cached_prompt_tokens,
                "quantized_layers": len(e.runner.packed),  # linear layers decoded from quantized codes
                "int8_activations": e.runner.int8_activations,  # whether they round activations to int8
                "threads": e.governor.current,  # this step's: all, or one while the cores are shared
                "max_threads": e.governor.threads,
                "shared_cpu_drops": e.governor.drops,  # times steps dropped to one thread
            }
            for name, e in state.pool.engines().items()
        }
        return JSONResponse({"status": "ok", "version": __version__, "engines": engines})

    for module in (files, fine_tuning, models, chat, completions):
        app.include_router(module.router, prefix="/v1")
    return app


class RequestGuard:
    """Checks the API key and the declared body size before a request reaches a route.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` relays
    every chunk of a streamed response through a task and a memory stream of its own, which at 16
    streams cost the event loop more CPU than the chunks themselves.
    """

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refusal := self._refusal(scope)) is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.settings.api_key
        if key and scope["path"] not in ("/health", "/v1/health") and headers.get("authorization") != f"Bearer {key}":
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_upload_bytes + 1024**2:
            return error_response(413, f"Request body larger than {self.settings.max_upload_bytes:,} bytes.")
        return None
