"""OpenAI-style object ids."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` followed by ``length`` random letters and digits, e.g. ``ftjob-AbC...``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def fine_tuned_model_id(base: str, org: str, suffix: str | None, short_id: str | None = None) -> str:
    """``ft:BASE:ORG:SUFFIX:ID`` (an empty SUFFIX segment when there is none)."""
    return f"ft:{base}:{org}:{suffix or ''}:{short_id or random_id('', 8)}"
