"""The teacher's answers, kept so that no run pays twice for the same request.

One JSONL file, one line per finished answer: ``{"key": ..., "message": ..., "finish_reason": ...,
"usage": ...}``, where ``key`` is the sha256 of the request's canonical JSON (model, messages, tools,
response format and sampling parameters: change any of them and the teacher is asked again). Each
line is appended and flushed as soon as its answer arrives, so a run that is killed keeps every
answer that finished; the half-written line such a kill may leave is skipped when the file is read
again (and the next line starts on a fresh one). Failures are not cached: the next run retries them.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tuneloop.distill.examples import Answer, canonical_json, sha256_of


def request_key(request: dict[str, Any]) -> str:
    """The cache key of a teacher request: the sha256 of its canonical JSON."""
    return sha256_of(request)


class AnswerCache:
    """Answers by request key, read from and appended to one JSONL file (thread-safe appends)."""

    def __init__(self, path: Path):
        self.path = path
        self.answers: dict[str, Answer] = {}
        self.corrupt_lines = 0
        self._lock = threading.Lock()
        if path.is_file():
            self._load()

    def _load(self) -> None:
        with self.path.open("rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                    self.answers[record["key"]] = Answer(record["message"], record.get("finish_reason"))
                except (ValueError, KeyError, TypeError):
                    self.corrupt_lines += 1  # a line cut short by a killed run

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def get(self, key: str) -> Answer | None:
        return self.answers.get(key)

    def add(self, key: str, answer: Answer, usage: dict[str, Any] | None = None) -> None:
        """Keep an answer: appended as one line and flushed before this returns."""
        record = {"key": key, "message": answer.message, "finish_reason": answer.finish_reason, "usage": usage}
        line = (canonical_json(record) + "\n").encode("utf-8", "surrogatepass")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab+") as f:
                if f.tell() > 0:  # a line cut short by a kill has no newline: start on a fresh line
                    f.seek(-1, 2)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                f.write(line)
                f.flush()
            self.answers[key] = answer
