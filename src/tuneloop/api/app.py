"""The FastAPI application: OpenAI-compatible Files, Fine-tuning, Models and Chat Completions."""

from __future__ import annotations

import hmac
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop import __version__
from tuneloop.api import chat, completions, files, fine_tuning, models, stored
from tuneloop.api.errors import error_response, install_error_handlers
from tuneloop.api.state import AppState
from tuneloop.api.upstream import Upstreams
from tuneloop.config import Settings
from tuneloop.engine.model_pool import EngineOptions, ModelPool
from tuneloop.jobs.worker import Worker

log = logging.getLogger(__name__)


def create_app(settings: Settings, run_worker: bool = False) -> FastAPI:
    """Build the app; with ``run_worker`` the server also runs one job worker in a thread."""
    state = AppState.open(settings)
    if removed := state.files.blobs.clear_leftovers():
        log.info("removed %d partial uploads left by a crash", removed)
    options = EngineOptions(
        settings.max_batch, settings.max_queued_requests, settings.max_adapters,
        weights=settings.serve_weights, activations=settings.serve_activations,
        adaptive_threads=settings.adaptive_threads,
    )  # fmt: skip
    state.pool = ModelPool(state.catalog, state.jobs, options)
    state.upstreams = Upstreams.open(settings)  # gateway mode: one HTTP client per upstream, closed at shutdown

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
        await state.upstreams.aclose()

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
                "shared_cpu_steps": e.governor.shared_steps,  # steps (decode, prompt pieces) run on one thread
            }
            for name, e in state.pool.engines().items()
        }
        return JSONResponse({"status": "ok", "version": __version__, "engines": engines})

    for module in (files, fine_tuning, models, chat, stored, completions):
        app.include_router(module.router, prefix="/v1")
    return app


class RequestGuard:
    """Checks the API key and the body size before a request reaches a route.

    The body limit (``max_request_bytes``; for ``POST /v1/files`` the upload limit plus room for the
    form's fields) holds however the body comes: a declared ``Content-Length`` over it is refused at
    once, and the bytes of a chunked body are counted as they arrive, the request failing with 413
    as soon as they pass it (nothing more is read).

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` relays
    every chunk of a streamed response through a task and a memory stream of its own, which at 16
    streams cost the event loop more CPU than the chunks themselves.
    """

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings
        self.key = f"bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self._unauthorised(scope["path"], headers.get(b"authorization", b"")):
            response = error_response(401, "Incorrect API key provided.", code="invalid_api_key")
            return await response(scope, receive, send)
        limit = self.body_limit(scope)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await BodyTooLarge(limit).response()(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # answered by the route's error handlers
            return message

        await self.app(scope, counted, send)

    def _unauthorised(self, path: str, given: bytes) -> bool:
        """Whether the request lacks the API key (the scheme's case aside; compared in constant time)."""
        if self.key is None or path in ("/health", "/v1/health") or is_dashboard(path):
            return False
        scheme, _, token = given.partition(b" ")
        return not hmac.compare_digest(scheme.lower() + b" " + token.strip(), self.key)

    def body_limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files":
            return self.settings.max_upload_bytes + FORM_OVERHEAD
        return self.settings.max_request_bytes


def is_dashboard(path: str) -> bool:
    """The dashboard's paths (``/`` and ``/ui/...``): its pages check their own session (``tuneloop.ui``),
    and every data request they make comes back here with the key."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


#: Room in an upload's body for the multipart form around the file (boundaries, headers, purpose).
FORM_OVERHEAD = 64 * 1024


class BodyTooLarge(StarletteHTTPException):
    """A request body over the limit (raised while it is read: routes answer it as they answer HTTP errors)."""

    def __init__(self, limit: int):
        super().__init__(413, f"Request body larger than {limit:,} bytes.")
        self.code = "request_too_large"

    def response(self) -> JSONResponse:
        return error_response(413, self.detail, code=self.code)
