"""What the server commands share: the ``openai`` client, its errors as one-line messages, output helpers.

``openai`` is imported only when a command talks to the server, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from tuneloop.errors import TuneloopError

# the commands' console and time format are the job follower's, so a followed job and a table look alike
from tuneloop.jobs.follow import plain_console as output_console  # noqa: F401
from tuneloop.jobs.follow import timestamp  # noqa: F401

if TYPE_CHECKING:
    import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
PLACEHOLDER_KEY = "tuneloop"  # sent when TUNELOOP_API_KEY is unset; the server checks keys only when it has one
MAX_RETRIES = 1
TIMEOUT_SECONDS = 600.0  # long enough for a large upload
CONNECT_TIMEOUT_SECONDS = 10.0

BaseUrl = Annotated[
    str,
    typer.Option("--base-url", envvar="TUNELOOP_BASE_URL", help="URL of the tuneloop server's API.", show_envvar=True),
]


class ServerUnreachableError(TuneloopError):
    """No tuneloop server answers at the configured URL."""

    exit_code = 2


class APIRequestError(TuneloopError):
    """The server answered a request with an error (4xx/5xx); carries its message and status."""

    exit_code = 1

    def __init__(self, message: str, status: int, code: str | None = None, param: str | None = None):
        self.message, self.status, self.code, self.param = " ".join(message.split()), status, code, param
        super().__init__(f"{self.message} (HTTP {status})")


def make_client(base_url: str = DEFAULT_BASE_URL, api_key: str | None = None) -> openai.OpenAI:
    """An ``openai.OpenAI`` client for a tuneloop server; the key defaults to ``TUNELOOP_API_KEY``."""
    import openai

    key = api_key or os.environ.get("TUNELOOP_API_KEY") or PLACEHOLDER_KEY
    timeout = openai.Timeout(TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=MAX_RETRIES, timeout=timeout)


def _server_message(exc: openai.APIStatusError) -> str:
    """The ``message`` of OpenAI's error envelope, else the first line of the body."""
    body = exc.body  # the client unwraps {"error": {...}}
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return body["message"]
    text = exc.response.text.strip()
    return text.splitlines()[0][:200] if text else exc.response.reason_phrase or "request failed"


@contextmanager
def api_errors(base_url: str) -> Iterator[None]:
    """Turn the ``openai`` client's connection and status errors into one-line ``TuneloopError``s."""
    import openai

    try:
        yield
    except openai.APITimeoutError as exc:
        raise ServerUnreachableError(f"the tuneloop server at {base_url} did not answer in time") from exc
    except openai.APIConnectionError as exc:
        raise ServerUnreachableError(
            f"cannot reach the tuneloop server at {base_url}; start it with `tuneloop serve`"
        ) from exc
    except openai.APIStatusError as exc:
        raise APIRequestError(_server_message(exc), exc.status_code, exc.code, exc.param) from exc


@contextmanager
def connect(base_url: str = DEFAULT_BASE_URL) -> Iterator[openai.OpenAI]:
    """A client for the server at ``base_url``; API failures inside the block become ``TuneloopError``s."""
    client = make_client(base_url)
    try:
        with api_errors(base_url):
            yield client
    finally:
        client.close()


def table(*columns: str, ids: tuple[str, ...] = ()) -> Table:
    """A compact table; the ``ids`` columns are never truncated (wrapped if they must)."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in columns:
        if name in ids:
            t.add_column(name, overflow="fold", min_width=12)
        else:
            t.add_column(name, no_wrap=True)
    return t
