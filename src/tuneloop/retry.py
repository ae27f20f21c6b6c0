"""When to retry an HTTP request to another server, and how long to wait: shared by gateway mode's
upstream calls (``api/upstream.py``) and distillation's teacher (``distill/teacher.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

#: Statuses worth another try besides 5xx: timeout, conflict, rate limit.
RETRYABLE_STATUS = frozenset({408, 409, 429})


def retryable(status: int) -> bool:
    """Whether an answer with ``status`` may succeed when asked again (501 Not Implemented never will)."""
    return status in RETRYABLE_STATUS or (status >= 500 and status != 501)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: ``base * 2**attempt`` seconds (at most ``cap``), times a jitter
    factor in [0.5, 1); a server's ``retry-after`` is honoured up to ``max_retry_after``."""

    max_retries: int = 5
    base: float = 1.0
    cap: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int, jitter: float) -> float:
        """The wait after failed attempt number ``attempt`` (0-based) with no server hint."""
        return min(self.cap, self.base * 2**attempt) * (0.5 + 0.5 * jitter)


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """The wait a server asks for: ``retry-after-ms``, ``retry-after`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError):
        return None
