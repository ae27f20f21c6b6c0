"""What a training file says about the prompts a fine-tuned model expects."""

from __future__ import annotations

import json
from pathlib import Path


def _messages(record: object) -> list | None:
    """A line's messages: chat (``messages``) or preference (``input.messages``) format."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("messages"), list):
        return record["messages"]
    source = record.get("input")
    return source.get("messages") if isinstance(source, dict) and isinstance(source.get("messages"), list) else None


def constant_system_prompt(path: Path) -> str | None:
    """The system message every example of a JSONL training file starts with, when it is one and the same
    text in all of them; None when any example lacks it, differs, or a line is not a chat example."""
    found: str | None = None
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                messages = _messages(json.loads(line))
            except ValueError:
                return None
            first = messages[0] if messages else None
            is_system = isinstance(first, dict) and first.get("role") == "system"
            if not (is_system and isinstance(first.get("content"), str)):
                return None
            if found is not None and first["content"] != found:
                return None
            found = first["content"]
    return found
