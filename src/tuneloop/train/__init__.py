"""Step 2 — supervised fine-tuning: ``train(config) -> TrainResult``.

LoRA or full fine-tuning of a catalog model on a chat (or prompt/completion) JSONL file, with the
loss only on trained tokens, padding-free packed batches that compute a shared prompt prefix once,
exact gradient accumulation, per-step metrics, atomic checkpoints and exact resume, on one
process or many (``torchrun``).
"""

from tuneloop.train.config import ResolvedHyperparameters, TrainConfig, resolve_hyperparameters
from tuneloop.train.loop import TrainResult, train
from tuneloop.train.metrics import CheckpointInfo, StepMetrics, TrainCallbacks

__all__ = [
    "CheckpointInfo",
    "ResolvedHyperparameters",
    "StepMetrics",
    "TrainCallbacks",
    "TrainConfig",
    "TrainResult",
    "resolve_hyperparameters",
    "train",
]
