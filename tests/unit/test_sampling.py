"""Choosing the next token: a batch's argmax is used only where nothing changes a row's logits."""

from __future__ import annotations

import torch

from tuneloop.engine.sampling import Sampler, SamplingParams


def test_a_batch_argmax_is_used_for_plain_greedy_rows_only():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    plain = Sampler(SamplingParams(temperature=0.0), set())
    assert plain.choose(logits, best=1).token == plain.choose(logits).token == 1
    penalized = Sampler(SamplingParams(temperature=0.0, frequency_penalty=1.0), set())
    assert penalized.choose(logits, best=1).token == 1  # no counts yet: nothing penalized
    assert penalized.choose(logits, best=1).token == 2  # token 1 now penalized: the hint is not used
