"""Step 2 — supervised fine-tuning and DPO: ``train(config, settings=...) -> TrainResult``.

LoRA or full fine-tuning of a catalog model on a chat (or prompt/completion) JSONL file, with the
loss only on trained tokens, or with DPO on a preference file (``objective="dpo"``, ``train.dpo``), with
padding-free packed batches that compute a shared prompt prefix once (and a pair's prompt once),
exact gradient accumulation, per-step metrics, atomic checkpoints and exact resume, on one
process or many (``torchrun``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneloop.train.config import ResolvedHyperparameters, TrainConfig, resolve_hyperparameters
from tuneloop.train.hyperparameters import BOUNDS, HyperparameterError, Hyperparameters, check_hyperparameter
from tuneloop.train.metrics import CheckpointInfo, StepMetrics, TrainCallbacks

if TYPE_CHECKING:
    from tuneloop.train.loop import TrainResult, train

__all__ = [
    "BOUNDS",
    "CheckpointInfo",
    "HyperparameterError",
    "Hyperparameters",
    "ResolvedHyperparameters",
    "StepMetrics",
    "TrainCallbacks",
    "TrainConfig",
    "TrainResult",
    "check_hyperparameter",
    "resolve_hyperparameters",
    "train",
]


def __getattr__(name: str) -> Any:
    """``train`` and ``TrainResult`` on first use: the loop imports torch, which the CLI must not load at start-up
    (``tuneloop.cli.options`` imports this package's hyperparameter bounds)."""
    if name in ("train", "TrainResult"):
        from tuneloop.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
