"""Training-cost estimates shared by the validator and the trainer: OpenAI's epoch heuristic."""

from __future__ import annotations

from functools import lru_cache

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def auto_epochs(n_examples: int) -> tuple[int, str]:
    """Epochs for ``"auto"``, by OpenAI's published heuristic, and the rule that chose it.

    Target 3 epochs, but keep examples × epochs within [100, 25000] and epochs within [1, 25].
    """
    if n_examples <= 0:
        return TARGET_EPOCHS, "no examples: default 3 epochs"
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
        return n, f"{n_examples} examples x 3 < 100: min(25, 100 // {n_examples}) = {n} epochs"
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
        return n, f"{n_examples} examples x 3 > 25000: max(1, 25000 // {n_examples}) = {n} epochs"
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
