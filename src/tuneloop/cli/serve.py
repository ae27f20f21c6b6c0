"""``tuneloop serve`` and ``tuneloop worker``."""

from __future__ import annotations

import logging
import tempfile

import typer

from tuneloop.config import Upstream, check_upstreams, get_settings
from tuneloop.errors import TuneloopError


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Also run one job worker in this process."),
    upstream: list[str] = typer.Option(
        [],
        "--upstream",
        metavar="NAME=[KEY_ENV@]BASE_URL",
        help="Gateway mode (repeatable): chat requests for model NAME/<id> that this server does not host go to "
        "the OpenAI-compatible server at BASE_URL as model <id>, with the key held by environment variable KEY_ENV.",
    ),  # fmt: skip
) -> None:
    """Start the OpenAI-compatible API server (and, by default, one fine-tuning worker).

    Example of a gateway to OpenAI: ``tuneloop serve --upstream openai=OPENAI_API_KEY@https://api.openai.com/v1``,
    then ask for ``model="openai/gpt-4o-mini"``.
    """
    # here, not at the top: the app loads torch and the engine, which other commands must not wait for
    import uvicorn

    from tuneloop.api.app import create_app
    from tuneloop.ui import mount_dashboard

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    settings.upstreams = parse_upstreams(upstream, settings.upstreams)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    # the server's temporary files (an upload being received spools past 1 MB) stay inside its home
    tempfile.tempdir = str(settings.home / "tmp")
    (settings.home / "tmp").mkdir(parents=True, exist_ok=True)
    app = create_app(settings, run_worker=worker)
    mount_dashboard(app, settings)  # the dashboard at / (and /ui/...), over the same API
    # on SIGTERM/Ctrl-C: open requests get 30 s to finish, then the engines cancel what is left
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


def parse_upstreams(values: list[str], configured: list[Upstream] | None = None) -> list[Upstream]:
    """The configured upstreams and the ``--upstream`` values; a one-line error for the first value that
    is not ``NAME=[KEY_ENV@]BASE_URL``, or a name given twice."""
    try:
        return check_upstreams([*(configured or []), *(Upstream.parse(v) for v in values)])
    except ValueError as exc:
        raise TuneloopError(f"--upstream: {exc}") from None


def worker() -> None:
    """Run a fine-tuning worker: claim queued jobs from the database and train them."""
    from tuneloop.jobs.worker import Worker  # here, not at the top: it loads torch (through the training loop)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    w = Worker(get_settings())
    try:
        w.run_forever()
    except KeyboardInterrupt:
        w.shutdown.set()
