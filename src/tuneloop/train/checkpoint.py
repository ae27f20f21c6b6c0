"""Checkpoints: ``checkpoints/step-<N>/`` holds the weights (a PEFT adapter folder or a model folder),
``trainer_state.pt`` (optimizer, scheduler, data order, RNG) and ``checkpoint.json`` (step,
metrics, resolved configuration).

A checkpoint is written under a temporary name and renamed into place when complete, so a process
killed at any moment leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuneloop.errors import TuneloopError

STATE_FILE = "trainer_state.pt"
META_FILE = "checkpoint.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    """The random generators' states (Python, torch CPU, CUDA)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(
    root: Path,
    step: int,
    write_weights: Callable[[Path], None],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``root/step-<step>`` atomically and delete all but the newest ``keep`` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    final = root / f"step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_weights(tmp)
    torch.save(trainer_state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if (m := _STEP_RE.match(p.name)) and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The trainer state saved in a checkpoint folder."""
    file = folder / STATE_FILE
    if not file.is_file():
        raise TuneloopError(f"{folder}: not a checkpoint (no {STATE_FILE})")
    return torch.load(file, map_location="cpu", weights_only=True)


def read_meta(folder: Path) -> dict[str, Any]:
    """The ``checkpoint.json`` of a checkpoint folder."""
    return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
