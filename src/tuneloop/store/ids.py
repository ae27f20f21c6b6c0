"""OpenAI-style object ids."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` followed by ``length`` random letters and digits, e.g. ``ftjob-AbC...``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def fine_tuned_model_id(base: str, org: str, suffix: str | None, job_id: str) -> str:
    """``ft:BASE:ORG:SUFFIX:ID`` (an empty SUFFIX segment when there is none).

    ID is 8 characters of the job id, so a job's checkpoints (``…:ID:ckpt-step-N``) and its final
    model share it, as on OpenAI.
    """
    return f"ft:{base}:{org}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"
