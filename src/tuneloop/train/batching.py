"""From rendered examples to packed micro-batches: no padding, and a shared prefix computed once.

A micro-batch is one flat sequence: the prefix its examples share (typically the system prompt),
then each example's remaining tokens. Position ids restart after the prefix for every example,
and attention lets each example see the prefix and its own earlier tokens only, so examples never
attend to each other and the result equals running each example on its own.

Only the tokens the loss needs are computed: an example ends at its last label position (the
tokens after the last trained token predict nothing), and the prefix never contains a label
position, so the loss of a shared token is never counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from tuneloop.data.render import Rendered


@dataclass(frozen=True)
class Sample:
    """One rendered example reduced to what the loss needs."""

    #: Input tokens ``[0, end)``, where ``end - 1`` is the last position whose next token is trained.
    input_ids: tuple[int, ...]
    #: Input positions whose next token is trained (the label positions), ascending.
    label_positions: tuple[int, ...]
    #: The trained next tokens, one per label position.
    targets: tuple[int, ...]
    #: Tokens of the (truncated) example, as billed: OpenAI's "trained tokens" count these.
    n_tokens: int

    @property
    def n_labels(self) -> int:
        """Number of tokens that carry loss."""
        return len(self.targets)

    @property
    def first_label(self) -> int:
        """The first label position (a shared prefix must stop before it)."""
        return self.label_positions[0]

    @property
    def n_computed(self) -> int:
        """Tokens a forward pass computes for this sample alone."""
        return len(self.input_ids)


class Packable(Protocol):
    """What micro-batching needs of a sample: a ``Sample``, or a DPO pair (``train.pairs.PairSample``)."""

    @property
    def input_ids(self) -> tuple[int, ...]: ...  # sorting key; its start may be shared with the micro-batch
    @property
    def first_label(self) -> int: ...
    @property
    def n_computed(self) -> int: ...
    @property
    def n_labels(self) -> int: ...  # the loss normaliser's share: trained tokens, or 1 per DPO pair
    @property
    def n_tokens(self) -> int: ...


def to_sample(rendered: Rendered) -> Sample | None:
    """Reduce a rendered example; None when no token of it carries loss."""
    ids, mask = rendered.input_ids, rendered.mask
    positions = [t for t in range(len(ids) - 1) if mask[t + 1]]
    if not positions:
        return None
    end = positions[-1] + 1
    return Sample(tuple(ids[:end]), tuple(positions), tuple(ids[t + 1] for t in positions), len(ids))


def shared_prefix_length(samples: Sequence[Packable]) -> int:
    """Longest prefix all samples share that holds no label position (0 for fewer than 2 samples)."""
    if len(samples) < 2:
        return 0
    first = samples[0].input_ids
    limit = min(s.first_label for s in samples)
    n = 0
    while n < limit and all(s.input_ids[n] == first[n] for s in samples):
        n += 1
    return n


def computed_tokens(samples: Sequence[Packable], share_prefix: bool) -> int:
    """Tokens a forward pass over ``samples`` computes (the shared prefix counted once)."""
    prefix = shared_prefix_length(samples) if share_prefix else 0
    return prefix + sum(s.n_computed - prefix for s in samples)


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch (1-based), a pure function of seed and epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last batch may be smaller)."""
    return math.ceil(n_examples / batch_size)


def batch_indices(order: Sequence[int], batch_size: int, index_in_epoch: int) -> list[int]:
    """Example indices of the ``index_in_epoch``-th (0-based) batch of an epoch's order."""
    return list(order[index_in_epoch * batch_size : (index_in_epoch + 1) * batch_size])


def shard(indices: Sequence[int], samples: Sequence[Packable], rank: int, world_size: int) -> list[int]:
    """This rank's share of a global batch: contiguous (so shared prefixes stay together), balanced by tokens."""
    ordered = sorted(indices, key=lambda i: samples[i].input_ids)
    if world_size == 1:
        return ordered
    total = sum(samples[i].n_computed for i in ordered)
    parts: list[list[int]] = [[] for _ in range(world_size)]
    seen = 0
    for i in ordered:
        part = min(world_size - 1, int(seen * world_size / max(total, 1)))
        parts[part].append(i)
        seen += samples[i].n_computed
    return parts[rank]


def micro_batches(
    indices: Sequence[int],
    samples: Sequence[Packable],
    max_tokens: int,
    max_examples: int | None = None,
    share_prefix: bool = True,
) -> list[list[int]]:
    """Split a batch into micro-batches of at most ``max_tokens`` computed tokens each.

    Examples are sorted by their token ids first, so those sharing a prefix land together.
    An example longer than ``max_tokens`` gets a micro-batch of its own.
    """
    ordered = sorted(indices, key=lambda i: samples[i].input_ids)
    groups: list[list[int]] = []
    current: list[int] = []
    for i in ordered:
        candidate = current + [i]
        too_many = max_examples is not None and len(candidate) > max_examples
        cost = computed_tokens([samples[j] for j in candidate], share_prefix)
        if current and (too_many or cost > max_tokens):
            groups.append(current)
            candidate = [i]
        current = candidate
    if current:
        groups.append(current)
    return groups


@dataclass
class PackedBatch:
    """Tensors for one forward pass over a micro-batch (see the module docstring)."""

    input_ids: torch.Tensor  # (L,) the shared prefix, then each example's remaining tokens
    position_ids: torch.Tensor  # (L,)
    prefix_length: int  # P: tokens of the shared prefix at the start of input_ids
    suffix_slots: torch.Tensor  # (L - P,) each suffix token's slot in an (examples x longest suffix) grid
    suffix_attention: torch.Tensor  # (examples, 1, longest suffix, P + longest suffix) bool, True = attend
    label_index: torch.Tensor  # (N,) positions in input_ids whose output is scored
    targets: torch.Tensor  # (N,) the tokens those positions must predict
    label_example: torch.Tensor  # (N,) the example (0..n_examples-1) each label position belongs to
    n_examples: int
    n_tokens: int  # tokens billed for these examples
    #: DPO pairs only (``train.pairs.pack_pairs``): each pair is one row of the grid, and ``label_example``
    #: counts sequences (2i: pair i's preferred reply, 2i+1: its non-preferred one); the reference model's
    #: log-probabilities of those sequences, (2 x n_examples,).
    reference: torch.Tensor | None = None

    @property
    def longest_suffix(self) -> int:
        """Length of the longest per-example part after the prefix."""
        return self.suffix_attention.shape[2]

    def to(self, device: torch.device | str) -> PackedBatch:
        """The same batch with its tensors on ``device``."""
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**fields)


def pack(samples: Sequence[Sample], share_prefix: bool = True) -> PackedBatch:
    """Build the flat, padding-free tensors of one micro-batch."""
    prefix = shared_prefix_length(samples) if share_prefix else 0
    suffixes = [s.input_ids[prefix:] for s in samples]
    longest = max(len(s) for s in suffixes)
    ids: list[int] = list(samples[0].input_ids[:prefix])
    positions: list[int] = list(range(prefix))
    slots: list[int] = []
    label_index: list[int] = []
    targets: list[int] = []
    label_example: list[int] = []
    attend = torch.zeros(len(samples), 1, longest, prefix + longest, dtype=torch.bool)
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    for b, (sample, suffix) in enumerate(zip(samples, suffixes, strict=True)):
        start = len(ids)
        n = len(suffix)
        ids.extend(suffix)
        positions.extend(range(prefix, prefix + n))
        slots.extend(range(b * longest, b * longest + n))
        label_index.extend(start + t - prefix for t in sample.label_positions)
        targets.extend(sample.targets)
        label_example.extend([b] * sample.n_labels)
        attend[b, 0, :n, :prefix] = True
        attend[b, 0, :n, prefix : prefix + n] = causal[:n, :n]
        attend[b, 0, n:, :] = True  # padding rows attend everywhere (their output is dropped; avoids NaN)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        position_ids=torch.tensor(positions, dtype=torch.long),
        prefix_length=prefix,
        suffix_slots=torch.tensor(slots, dtype=torch.long),
        suffix_attention=attend,
        label_index=torch.tensor(label_index, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        label_example=torch.tensor(label_example, dtype=torch.long),
        n_examples=len(samples),
        n_tokens=sum(s.n_tokens for s in samples),
    )
