"""Pure logic of the trainer's data path: samples, shared prefixes, micro-batches, sharding, packing."""

from __future__ import annotations

import pytest
import torch

from tuneloop.data.render import Rendered
from tuneloop.train.batching import (
    Sample,
    batch_indices,
    computed_tokens,
    epoch_order,
    micro_batches,
    pack,
    shard,
    shared_prefix_length,
    steps_per_epoch,
    to_sample,
)


def sample(ids: list[int], trained_from: int) -> Sample:
    """A sample whose tokens from ``trained_from`` on are trained (plus one untrained trailing token)."""
    mask = [i >= trained_from for i in range(len(ids))] + [False]
    s = to_sample(Rendered(ids + [99], mask))
    assert s is not None
    return s


def test_sample_keeps_only_what_the_loss_needs() -> None:
    r = Rendered([10, 11, 12, 13, 14, 15], [False, False, True, True, False, False])
    s = to_sample(r)
    assert s is not None
    assert s.label_positions == (1, 2)  # outputs at 1 and 2 predict tokens 2 and 3
    assert s.targets == (12, 13)
    assert s.input_ids == (10, 11, 12)  # tokens after the last label position predict nothing
    assert s.n_tokens == 6  # billed: the whole (truncated) example


def test_sample_without_trained_tokens_is_dropped() -> None:
    assert to_sample(Rendered([1, 2, 3], [False, False, False])) is None
    assert to_sample(Rendered([1, 2, 3], [True, False, False])) is None  # the first token has no predecessor


def test_shared_prefix_stops_before_the_first_label_position() -> None:
    a = sample([1, 2, 3, 4, 5, 6], trained_from=5)
    b = sample([1, 2, 3, 4, 7, 8], trained_from=5)
    assert shared_prefix_length([a, b]) == 4
    c = sample([1, 2, 3, 4, 5, 6], trained_from=3)  # label position 2: the prefix may not reach it
    assert shared_prefix_length([a, c]) == 2
    assert shared_prefix_length([a]) == 0
    assert computed_tokens([a, b], share_prefix=True) == 4 + 1 + 1
    assert computed_tokens([a, b], share_prefix=False) == 10  # input ids end at the last label position


def test_micro_batches_respect_the_token_budget_and_cover_the_batch() -> None:
    samples = [sample([1, 2, 3] + [i] * (2 + i % 5), trained_from=4) for i in range(20)]
    groups = micro_batches(range(20), samples, max_tokens=20)
    assert sorted(i for g in groups for i in g) == list(range(20))
    for g in groups:
        assert len(g) == 1 or computed_tokens([samples[i] for i in g], True) <= 20
    assert all(len(g) <= 2 for g in micro_batches(range(20), samples, max_tokens=10_000, max_examples=2))


def test_shards_partition_the_batch() -> None:
    samples = [sample([1, 2, i, i + 1, i + 2], trained_from=3) for i in range(7)]
    parts = [shard(range(7), samples, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(7))
    assert all(parts)


def test_epoch_order_is_a_reproducible_permutation() -> None:
    assert sorted(epoch_order(10, 1, 1)) == list(range(10))
    assert epoch_order(10, 1, 1) == epoch_order(10, 1, 1)
    assert epoch_order(10, 1, 1) != epoch_order(10, 1, 2)
    assert steps_per_epoch(10, 4) == 3
    assert batch_indices(list(range(10)), 4, 2) == [8, 9]


@pytest.mark.parametrize("share", [True, False])
def test_pack_lays_out_prefix_and_examples(share: bool) -> None:
    a = sample([1, 2, 3, 4, 5], trained_from=4)
    b = sample([1, 2, 3, 6, 7, 8], trained_from=4)
    batch = pack([a, b], share_prefix=share)
    p = 3 if share else 0
    assert batch.prefix_length == p
    ids = batch.input_ids.tolist()
    assert ids[:p] == [1, 2, 3][:p]
    assert len(ids) == p + (len(a.input_ids) - p) + (len(b.input_ids) - p)
    # every label position, read back through the flat layout, predicts its target
    assert batch.targets.tolist() == list(a.targets + b.targets)
    # positions restart after the prefix for each example
    assert batch.position_ids.tolist() == list(range(p)) + list(range(p, 4)) + list(range(p, 5))
    # example b never sees example a's tokens: its first suffix row attends to the prefix and itself only
    row = batch.suffix_attention[1, 0, 0]
    assert row[:p].all() and row[p] and not row[p + 1 :].any()
    assert batch.suffix_attention.dtype == torch.bool


def test_pack_records_which_example_each_label_belongs_to() -> None:
    a = sample([1, 2, 3, 4, 5], trained_from=3)
    b = sample([1, 2, 6, 7], trained_from=3)
    batch = pack([a, b])
    assert batch.label_example.tolist() == [0] * a.n_labels + [1] * b.n_labels


def test_exact_answers_counts_examples_with_every_label_right() -> None:
    from tuneloop.train.loss import exact_answers

    hits = torch.tensor([True, True, False, True, True, True])
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    assert exact_answers(hits, owner, 3).item() == 2  # example 1 missed one token
    assert exact_answers(torch.ones(2, dtype=torch.bool), torch.tensor([0, 0]), 1).item() == 1
