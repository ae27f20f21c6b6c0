"""Training-cost estimates shared by the validator and the trainer: the ``"auto"`` epochs rule and the time."""

from __future__ import annotations

import math
from functools import lru_cache

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


#: A training file is a label set when every final answer is one short line and answers repeat.
LABEL_MAX_CHARS = 64
#: On a label set, ``"auto"`` aims to show the model each label about this many times ...
LABEL_PASSES = 64
#: ... within this many epochs.
MAX_LABEL_EPOCHS = 10


class AnswerProfile:
    """Counts the final answers of a training file, to tell a label set (classification) from free text.

    Memory stays bounded: counting stops at the first answer that is not one short line.
    """

    def __init__(self) -> None:
        self.n_examples = 0
        self.free_text = False
        self._answers: set[str] = set()

    def add(self, answer: str | None) -> None:
        """Count one example's final answer (``examples.final_answer``; None: not a text answer)."""
        self.n_examples += 1
        text = (answer or "").strip()
        if self.free_text or answer is None or len(text) > LABEL_MAX_CHARS or "\n" in text:
            self.free_text, self._answers = True, set()
            return
        self._answers.add(text)

    @property
    def n_labels(self) -> int | None:
        """Distinct answers when the file is a label set (each answer seen twice on average or more), else None."""
        n = len(self._answers)
        return n if not self.free_text and 0 < n <= self.n_examples / 2 else None


def auto_epochs(n_examples: int, n_labels: int | None = None) -> tuple[int, str]:
    """Epochs for ``"auto"`` and the rule that chose it.

    OpenAI's published heuristic: target 3 epochs, keeping examples x epochs within [100, 25000]
    and epochs within [1, 25]. On a label set with few examples per label (``n_labels`` distinct
    answers), enough epochs to show each label about ``LABEL_PASSES`` times, at most
    ``MAX_LABEL_EPOCHS``: on CLINC150 at 8 examples per intent (benchmarks/sweep_auto_hparams.py)
    held-out accuracy rose from 83.2% after 3 epochs to 85.2% after 8, while the loss stalled.
    """
    if n_examples <= 0:
        return TARGET_EPOCHS, "no examples: default 3 epochs"
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
        return n, f"{n_examples} examples x 3 < 100: min(25, 100 // {n_examples}) = {n} epochs"
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
        return n, f"{n_examples} examples x 3 > 25000: max(1, 25000 // {n_examples}) = {n} epochs"
    if n_labels:
        per_label = n_examples / n_labels
        wanted = min(MAX_LABEL_EPOCHS, math.ceil(LABEL_PASSES / per_label), MAX_TARGET_EXAMPLES // n_examples)
        if wanted > TARGET_EPOCHS:
            return wanted, (
                f"{n_examples} examples of {n_labels} labels ({per_label:.1f} per label): "
                f"ceil({LABEL_PASSES} / {per_label:.1f}) = {wanted} epochs, so each label is seen about "
                f"{LABEL_PASSES} times (at most {MAX_LABEL_EPOCHS}; tuned on CLINC150)"
            )
    return TARGET_EPOCHS, f"{n_examples} examples: the default 3 epochs"


#: Effective training rate as a multiple of the measured matmul rate, counting 4 FLOPs per parameter per
#: token. Above 1 because the trainer skips work a plain trainer does (the vocabulary projection off the
#: labels, a shared system prompt computed once per batch): benchmarks/train_throughput.py measured 1.84
#: on Snips (232 tokens/s at 67.9 GFLOP/s); 1.5 leaves room for data with less shared prefix.
TRAINING_EFFICIENCY = 1.5


@lru_cache(maxsize=1)
def machine_matmul_flops() -> float:
    """This machine's float32 matmul rate (FLOP/s), measured once per process in about 0.2 s."""
    import time

    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)  # warm up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2:
        torch.mm(a, b)
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def training_seconds(n_params: int, tokens: int, flops: float | None = None) -> float:
    """Rough training time: a LoRA step costs about 4 FLOPs per parameter per token (forward plus
    the backward pass to the inputs; frozen weights get no gradient), at TRAINING_EFFICIENCY of the
    measured matmul rate."""
    rate = (flops or machine_matmul_flops()) * TRAINING_EFFICIENCY
    return 4 * n_params * tokens / rate
