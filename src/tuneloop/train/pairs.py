"""DPO pairs packed like supervised examples: no padding, and the prompt of a pair computed once.

A pair's two conversations (the input, then the preferred or the non-preferred reply) share their
first tokens. ``pack_pairs`` lays each pair out as one row of ``PackedBatch``'s grid: the tokens both
sides share, then the rest of the preferred side, then the rest of the non-preferred side, whose
position ids restart where the shared part ends and which attends to the shared part and to itself
only. The prefix every pair of a micro-batch shares (a system prompt) is computed once for all of
them, exactly as for supervised batches, so ``PackedCausalLM`` runs pairs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tuneloop.data.render import Rendered
from tuneloop.train.batching import PackedBatch, Sample, shared_prefix_length, to_sample


@dataclass(frozen=True)
class PairSample:
    """One preference pair reduced to what the DPO loss needs."""

    chosen: Sample  # the input, then the preferred reply (its only trained turn)
    rejected: Sample  # the input, then the non-preferred reply
    #: Leading input tokens both sides share (the prompt, and any first tokens the replies have in common).
    common: int
    #: The reference model's summed log-probabilities of (chosen, rejected), once computed (``train.dpo``).
    reference: tuple[float, float] | None = None

    @property
    def input_ids(self) -> tuple[int, ...]:
        """The preferred side's tokens (micro-batches sort by them; their shared start is the prompt)."""
        return self.chosen.input_ids

    @property
    def first_label(self) -> int:
        """The first label position of either side."""
        return min(self.chosen.first_label, self.rejected.first_label)

    @property
    def n_computed(self) -> int:
        """Tokens a forward pass computes for the pair: the shared part once, then each side's rest."""
        return len(self.chosen.input_ids) + len(self.rejected.input_ids) - self.common

    @property
    def n_labels(self) -> int:
        """A pair counts once in the loss normaliser (the DPO loss is a mean over pairs)."""
        return 1

    @property
    def n_tokens(self) -> int:
        """Tokens billed: both conversations."""
        return self.chosen.n_tokens + self.rejected.n_tokens


def to_pair(chosen: Rendered, rejected: Rendered) -> PairSample | None:
    """Reduce a rendered pair; None when either side has no trained token (e.g. truncated away)."""
    a, b = to_sample(chosen), to_sample(rejected)
    if a is None or b is None:
        return None
    limit = min(len(a.input_ids), len(b.input_ids))
    common = 0
    while common < limit and a.input_ids[common] == b.input_ids[common]:
        common += 1
    return PairSample(a, b, common)


def pack_pairs(pairs: Sequence[PairSample], share_prefix: bool = True) -> PackedBatch:
    """Build the flat, padding-free tensors of a micro-batch of pairs (see the module docstring).

    ``label_example`` counts sequences: ``2i`` is pair i's preferred side, ``2i + 1`` its non-preferred one.
    """
    prefix = shared_prefix_length(pairs) if share_prefix else 0
    longest = max(p.n_computed for p in pairs) - prefix
    ids: list[int] = list(pairs[0].input_ids[:prefix])
    positions: list[int] = list(range(prefix))
    slots: list[int] = []
    label_index: list[int] = []
    targets: list[int] = []
    label_example: list[int] = []
    attend = torch.zeros(len(pairs), 1, longest, prefix + longest, dtype=torch.bool)
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    for row, pair in enumerate(pairs):
        chosen, rejected, common = pair.chosen.input_ids, pair.rejected.input_ids, pair.common
        start, shared, rest = len(ids), common - prefix, len(chosen) - common  # the row: shared, chosen, rejected
        n = pair.n_computed - prefix
        ids += chosen[prefix:] + rejected[common:]
        positions += list(range(prefix, len(chosen))) + list(range(common, len(rejected)))
        slots += range(row * longest, row * longest + n)
        label_index += [start + t - prefix for t in pair.chosen.label_positions]
        label_index += [start + t - prefix + (rest if t >= common else 0) for t in pair.rejected.label_positions]
        targets += pair.chosen.targets + pair.rejected.targets
        label_example += [2 * row] * pair.chosen.n_labels + [2 * row + 1] * pair.rejected.n_labels
        grid = attend[row, 0]
        grid[:n, :prefix] = True
        grid[: shared + rest, prefix : prefix + shared + rest] = causal[: shared + rest, : shared + rest]
        grid[shared + rest : n, prefix : prefix + shared] = True
        grid[shared + rest : n, prefix + shared + rest : prefix + n] = causal[: n - shared - rest, : n - shared - rest]
        grid[n:, :] = True  # padding rows attend everywhere (their output is dropped; avoids NaN)
    known = all(p.reference is not None for p in pairs)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        position_ids=torch.tensor(positions, dtype=torch.long),
        prefix_length=prefix,
        suffix_slots=torch.tensor(slots, dtype=torch.long),
        suffix_attention=attend,
        label_index=torch.tensor(label_index, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        label_example=torch.tensor(label_example, dtype=torch.long),
        n_examples=len(pairs),
        n_tokens=sum(p.n_tokens for p in pairs),
        reference=torch.tensor([x for p in pairs for x in p.reference], dtype=torch.float64) if known else None,  # type: ignore[union-attr]
    )
