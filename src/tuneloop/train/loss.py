"""The loss: vocabulary projection and cross-entropy at label positions only, summed.

Summing (not averaging) per micro-batch and dividing once by the labels of the whole optimizer
step (every micro-batch, every process) makes gradient accumulation exact: a step of 8 examples
gives the same gradient as 4 accumulated micro-batches of 2, whatever their token counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def label_loss(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the exact (argmax) predictions, one bool per position; ``hidden`` holds
    label positions only."""
    logits = lm_head(hidden).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, logits.detach().argmax(dim=-1) == targets


def sequence_logprobs(
    hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor, label_sequence: torch.Tensor, n_sequences: int
) -> torch.Tensor:
    """Each sequence's summed log-probability of its trained tokens, (n_sequences,) in float32; ``hidden`` holds
    label positions only and ``label_sequence`` says which sequence each belongs to."""
    token = -F.cross_entropy(lm_head(hidden).float(), targets, reduction="none")
    return token.new_zeros(n_sequences).index_add(0, label_sequence, token)


def exact_answers(hits: torch.Tensor, label_example: torch.Tensor, n_examples: int) -> torch.Tensor:
    """Examples whose every trained token is predicted exactly: greedy decoding would reproduce the
    whole answer (its end-of-turn token included), the teacher-forced twin of exact-match accuracy."""
    misses = torch.zeros(n_examples, dtype=torch.long, device=hits.device)
    misses.index_add_(0, label_example, (~hits).long())
    return (misses == 0).sum()


def step_loss_scale(step_labels: int, world_size: int) -> float:
    """Factor turning a process's summed loss into its share of the step's mean loss.

    DistributedDataParallel averages gradients over processes, hence the ``world_size``.
    """
    return world_size / max(step_labels, 1)
