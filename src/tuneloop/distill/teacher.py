"""The teacher: any OpenAI-compatible Chat Completions endpoint, asked through the ``openai`` client
with tuneloop's own retries (the client's are off, so that every attempt is counted and waits can be
tested without sleeping).

Retried, with exponential backoff and jitter, or after the server's ``retry-after`` /
``retry-after-ms`` when it sends one: 408, 409, 429 and 5xx answers, timeouts and connection
errors. What happens when the retries run out: an HTTP error fails that one prompt
(``TeacherRequestError``, the example is dropped), while a teacher that cannot be reached at all
stops the run (``TeacherUnreachableError``). A refused key (401, 403) or an unknown model or URL
(404) stops the run at once: no later prompt would fare better.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneloop.distill.examples import Answer, Prompt
from tuneloop.errors import TuneloopError
from tuneloop.retry import RetryPolicy, retry_after_seconds, retryable

if TYPE_CHECKING:
    import openai

DEFAULT_TEACHER_URL = "https://api.openai.com/v1"
NO_KEY = "none"  # sent when the key's variable is unset (a local teacher may not check keys)
TIMEOUT_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 10.0


class TeacherError(TuneloopError):
    """The teacher cannot be used at all (refused key, unknown model); stops the run."""

    exit_code = 2


class TeacherUnreachableError(TeacherError):
    """No answer from the teacher's URL, retries included; stops the run."""


class TeacherRequestError(TuneloopError):
    """The teacher failed one request, retries included; only that prompt is dropped."""


@dataclass(frozen=True)
class Sampling:
    """The teacher's sampling parameters (part of every request, hence of its cache key)."""

    temperature: float = 0.0
    max_tokens: int | None = None


def teacher_request(model: str, prompt: Prompt, sampling: Sampling) -> dict[str, Any]:
    """The Chat Completions body for one prompt (``stream`` off, ``store`` unset)."""
    body: dict[str, Any] = {"model": model, "messages": prompt.messages, **prompt.options}
    body["temperature"] = sampling.temperature
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    return body


def make_teacher_client(base_url: str, api_key: str | None) -> openai.OpenAI:
    """An ``openai`` client for the teacher, without the client's own retries."""
    import openai

    timeout = openai.Timeout(TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    return openai.OpenAI(base_url=base_url, api_key=api_key or NO_KEY, max_retries=0, timeout=timeout)


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return " ".join(body["message"].split())[:200]
    return " ".join(exc.response.text.split())[:200] or exc.response.reason_phrase or "request failed"


class Teacher:
    """Asks one model at one URL, retrying per :class:`RetryPolicy`; counts every attempt."""

    def __init__(
        self,
        client: openai.OpenAI,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        key_hint: str = "",
    ):
        self.client = client
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.jitter = jitter
        self.key_hint = key_hint  # how to set the key, for the message of a refused one
        self.attempts = 0
        self.retries = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return str(self.client.base_url).rstrip("/")

    def _count(self, attempt: int) -> None:
        with self._lock:
            self.attempts += 1
            self.retries += attempt > 0

    def ask(self, body: dict[str, Any], stop: threading.Event | None = None) -> tuple[Answer, dict[str, Any] | None]:
        """The answer to one request and its usage; raises per the module docstring."""
        import openai

        for attempt in range(self.policy.max_retries + 1):
            self._count(attempt)
            try:
                response = self.client.chat.completions.create(**body).model_dump(exclude_none=True)
                return Answer.from_response(response), response.get("usage")
            except openai.APIStatusError as exc:
                status, failure = exc.status_code, exc
                if status in (401, 403):
                    hint = f"; {self.key_hint}" if self.key_hint else ""
                    raise TeacherError(f"the teacher at {self.url} refused the key (HTTP {status}){hint}") from exc
                if status == 404:
                    raise TeacherError(f"the teacher at {self.url}: {_message(exc)} (HTTP 404)") from exc
                if not retryable(status):
                    raise TeacherRequestError(f"HTTP {status}: {_message(exc)}") from exc
                wait = retry_after_seconds(exc.response.headers)
            except openai.APIConnectionError as exc:  # timeouts too
                failure, wait = exc, None
            except openai.APIError as exc:  # an answer that is not a chat completion
                raise TeacherRequestError(f"unreadable answer: {exc}") from exc
            if attempt == self.policy.max_retries or (stop is not None and stop.is_set()):
                break
            if wait is None:
                wait = self.policy.backoff(attempt, self.jitter())
            self.sleep(min(wait, self.policy.max_retry_after))
        tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
        if isinstance(failure, openai.APIStatusError):
            raise TeacherRequestError(f"HTTP {failure.status_code} after {tries}: {_message(failure)}") from failure
        cause = failure.__cause__ or failure
        what = "did not answer in time" if isinstance(failure, openai.APITimeoutError) else "cannot be reached"
        raise TeacherUnreachableError(
            f"the teacher at {self.url} {what} ({type(cause).__name__}) after {tries}; "
            "the answers that finished are cached, run again to go on"
        ) from failure
