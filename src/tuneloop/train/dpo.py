"""DPO (direct preference optimisation, Rafailov et al. 2023) with the sigmoid loss, on packed pairs.

For a pair with preferred reply c and non-preferred reply r, with pi and ref the summed
log-probabilities of each reply's trained tokens under the policy and the reference model::

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

The reward margin is ``beta * ((pi_c - ref_c) - (pi_r - ref_r))``, and a pair is ranked right when it
is positive (a tie, as when the policy still equals the reference, counts half).

The reference log-probabilities are computed once, before the first step, and kept with each pair
(``PairSample.reference``): with LoRA by the same model with its adapter disabled (peft's
``disable_adapter()``, no second copy of the weights), with full fine-tuning by the weights as they
are before training. The base weights never change under LoRA, so this equals running the reference
at every step, at a third of the cost. A run that starts from a fine-tuned model (SFT, then DPO)
has that model as its reference: its adapter stays enabled for the reference pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.errors import TuneloopError
from tuneloop.train.batching import micro_batches, shard
from tuneloop.train.distributed import DistContext
from tuneloop.train.packed import LossSums, PackedCausalLM
from tuneloop.train.pairs import PairSample, pack_pairs


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the sigmoid DPO loss and the reward margin (detached). ``policy`` and ``reference`` hold
    sequence log-probabilities, (2n,), each pair's preferred side first."""
    ratios = policy - reference
    logits = beta * (ratios[0::2] - ratios[1::2])
    return -F.logsigmoid(logits), logits.detach()


def ranked_right(margins: torch.Tensor) -> torch.Tensor:
    """1 for each pair whose preferred reply gains more than the other (margin > 0), 0.5 for a tie, else 0."""
    return (margins > 0).float() + 0.5 * (margins == 0).float()


class DPOLoss(nn.Module):
    """``forward(batch)`` of a packed pair batch (with its reference log-probabilities): the DPO ``LossSums``."""

    def __init__(self, packed: PackedCausalLM, beta: float):
        super().__init__()
        self.packed = packed
        self.beta = beta

    @property
    def model(self) -> nn.Module:
        """The (PEFT) model being trained."""
        return self.packed.model

    def forward(self, batch) -> LossSums:
        """Summed loss, pairs ranked right and summed reward margins of the batch's pairs."""
        if batch.reference is None:
            raise TuneloopError("DPO batch without the reference model's log-probabilities")
        policy = self.packed.sequence_logprobs(batch, 2 * batch.n_examples)
        losses, margins = dpo_loss(policy, batch.reference.to(policy), self.beta)
        right = ranked_right(margins).sum()
        return LossSums(losses.sum(), right, batch.n_examples, right, batch.n_examples, margins.sum())


@torch.no_grad()
def score_pairs(
    packed: PackedCausalLM,
    pairs: Sequence[PairSample],
    max_tokens: int,
    device: torch.device,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Summed log-probabilities of each pair's (preferred, non-preferred) replies under the model as it is,
    (len(pairs), 2) float64, in eval mode (no dropout)."""
    model, out = packed.model, torch.zeros(len(pairs), 2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for group in micro_batches(range(len(pairs)), pairs, max_tokens, None, share_prefix):
            batch = pack_pairs([pairs[i] for i in group], share_prefix).to(device)
            logprobs = packed.sequence_logprobs(batch, 2 * len(group)).double().cpu().view(-1, 2)
            out[torch.tensor(group)] = logprobs
    finally:
        model.train(was_training)
    return out


def with_reference(
    packed: PackedCausalLM,
    pairs: Sequence[PairSample],
    max_tokens: int,
    ctx: DistContext,
    share_prefix: bool = True,
    fresh_adapter: bool = True,
) -> list[PairSample]:
    """``pairs`` with the reference model's log-probabilities: the model as it is now (call before
    training), with a fresh LoRA adapter disabled (it adds nothing yet; an adapter a run starts from is
    part of the reference). Several processes share the work."""
    if not pairs:
        return []
    mine = shard(range(len(pairs)), pairs, ctx.rank, ctx.world_size)
    disabled = getattr(packed.model, "disable_adapter", None) if fresh_adapter else None
    with disabled() if disabled is not None else contextlib.nullcontext():
        scores = score_pairs(packed, [pairs[i] for i in mine], max_tokens, ctx.device, share_prefix) if mine else None
    table = torch.zeros(len(pairs), 2, dtype=torch.float64)
    if scores is not None:
        table[torch.tensor(mine)] = scores
    values = ctx.all_reduce_sum(table.flatten().tolist())
    return [dataclasses.replace(p, reference=(values[2 * i], values[2 * i + 1])) for i, p in enumerate(pairs)]
