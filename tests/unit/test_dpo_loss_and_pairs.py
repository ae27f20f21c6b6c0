"""DPO's pure parts: the loss, pair packing (equal to running every conversation on its own), preference data checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tuneloop.data.render import Rendered
from tuneloop.data.validate import validate_file
from tuneloop.train.batching import computed_tokens, micro_batches
from tuneloop.train.dpo import DPOLoss, dpo_loss, ranked_right
from tuneloop.train.packed import PackedCausalLM
from tuneloop.train.pairs import PairSample, pack_pairs, to_pair


def test_the_loss_is_log_2_while_the_policy_is_the_reference() -> None:
    policy = torch.tensor([-3.0, -5.0, -1.0, -0.5])
    losses, margins = dpo_loss(policy, policy.clone(), beta=0.1)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)))
    assert margins.tolist() == [0.0, 0.0]
    assert ranked_right(margins).tolist() == [0.5, 0.5]  # a tie counts half: 50% before training


def test_the_loss_matches_its_formula_and_its_gradient_favours_the_preferred_reply() -> None:
    reference = torch.tensor([-4.0, -2.0, -7.0, -6.5], dtype=torch.float64)
    policy = torch.tensor([-3.0, -2.5, -8.0, -6.0], dtype=torch.float64, requires_grad=True)
    losses, margins = dpo_loss(policy, reference, beta=0.5)
    expected = [-math.log(1 / (1 + math.exp(-0.5 * ((-3 + 4) - (-2.5 + 2))))),
                -math.log(1 / (1 + math.exp(-0.5 * ((-8 + 7) - (-6 + 6.5)))))]  # fmt: skip
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(margins, torch.tensor([0.75, -0.75], dtype=torch.float64))
    assert ranked_right(margins).tolist() == [1.0, 0.0]
    losses.sum().backward()
    grad = policy.grad.tolist()
    assert grad[0] < 0 < grad[1] and grad[2] < 0 < grad[3]  # descent raises the preferred, lowers the other
    assert grad[0] == pytest.approx(-grad[1])


def rendered(prompt: list[int], reply: list[int]) -> Rendered:
    """A conversation whose reply (and a closing token 2) is trained, followed by an untrained newline (198)."""
    ids = prompt + reply + [2, 198]
    return Rendered(ids, [False] * len(prompt) + [True] * (len(reply) + 1) + [False])


def test_a_pair_keeps_what_both_sides_share_once() -> None:
    pair = to_pair(rendered([5, 6, 7, 8], [30, 31]), rendered([5, 6, 7, 8], [40]))
    assert pair is not None and pair.common == 4  # the prompt
    assert pair.chosen.input_ids == (5, 6, 7, 8, 30, 31) and pair.rejected.input_ids == (5, 6, 7, 8, 40)
    assert pair.n_computed == 4 + 2 + 1 and pair.n_labels == 1
    assert pair.n_tokens == 8 + 7  # billed: both whole conversations
    same_start = to_pair(rendered([5, 6], [30, 31, 32]), rendered([5, 6], [30, 33]))
    assert same_start is not None and same_start.common == 3  # the replies' common first token too
    assert to_pair(rendered([5, 6], [30]), Rendered([5, 6, 30], [False, False, False])) is None  # nothing trained


def pair_batch() -> list[PairSample]:
    system = [1, 9, 10, 11, 12, 2, 198]
    prompts = [system + [1, 20 + i, 21 + i, 22, 2, 198, 1, 50, 51] for i in range(3)]
    sides = [([60, 61, 62], [70]), ([80, 81], [80, 82, 83]), ([90], [90, 91])]  # the third: rejected extends chosen
    pairs = [to_pair(rendered(p, c), rendered(p, r)) for p, (c, r) in zip(prompts, sides, strict=True)]
    assert all(p is not None for p in pairs)
    return pairs  # type: ignore[return-value]


def test_pairs_are_micro_batched_by_the_tokens_they_compute() -> None:
    pairs = pair_batch()
    shared = computed_tokens(pairs, share_prefix=True)
    assert shared == 8 + sum(p.n_computed - 8 for p in pairs) < sum(p.n_computed for p in pairs)  # system + [1]
    groups = micro_batches(range(3), pairs, max_tokens=pairs[0].n_computed + 1)
    assert sorted(i for g in groups for i in g) == [0, 1, 2] and all(len(g) == 1 for g in groups)


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def sequence_logprob(model: torch.nn.Module, sample) -> float:
    """The stock forward on one conversation alone: summed log-probability of its trained tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([sample.input_ids])).logits[0].double().log_softmax(-1)
    return sum(logits[t, y].item() for t, y in zip(sample.label_positions, sample.targets, strict=True))


@pytest.mark.parametrize("share", [True, False])
def test_packed_pairs_give_each_conversations_own_log_probability(tiny_llama, share: bool) -> None:
    pairs = pair_batch()
    batch = pack_pairs(pairs, share_prefix=share)
    assert batch.prefix_length == (8 if share else 0) and batch.n_examples == 3
    assert len(batch.input_ids) == computed_tokens(pairs, share)  # no padding: each prompt computed once
    assert batch.label_example.tolist() == sorted(batch.label_example.tolist())  # 0, 0, ..., 1, ..., 5
    got = PackedCausalLM(tiny_llama).sequence_logprobs(batch, 6)
    expected = [sequence_logprob(tiny_llama, s) for p in pairs for s in (p.chosen, p.rejected)]
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_the_dpo_module_uses_the_reference_carried_by_the_batch(tiny_llama) -> None:
    pairs = pair_batch()
    module = DPOLoss(PackedCausalLM(tiny_llama), beta=0.1)
    with pytest.raises(Exception, match="reference"):
        module(pack_pairs(pairs))
    own = PackedCausalLM(tiny_llama).sequence_logprobs(pack_pairs(pairs), 6).tolist()
    with_ref = [PairSample(p.chosen, p.rejected, p.common, (own[2 * i], own[2 * i + 1])) for i, p in enumerate(pairs)]
    out = module(pack_pairs(with_ref))
    assert out.loss.item() == pytest.approx(3 * math.log(2), abs=1e-5)  # policy == reference
    assert out.labels == out.examples == 3 and float(out.margin) == pytest.approx(0.0, abs=1e-5)


# -- preference data ---------------------------------------------------------------------------------------
def pair_line(i: int, good: str = "Yes.", bad: str = "No.") -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def test_preference_lines_missing_a_side_or_with_identical_sides_are_errors_at_their_line(tmp_path: Path) -> None:
    lines = [pair_line(i) for i in range(10)]
    lines[3] = {k: v for k, v in pair_line(3).items() if k != "non_preferred_output"}
    lines[5] = {k: v for k, v in pair_line(5).items() if k != "preferred_output"}
    lines[7] = pair_line(7, good="Same answer.", bad="Same answer.")
    lines[8] = pair_line(8, good="Same", bad=[{"type": "text", "text": "Same"}])  # the same text as a part list
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    report = validate_file(path)
    assert report.format == "preference"
    assert [(e.line, e.code) for e in report.errors] == [
        (4, "missing_preference_output"),
        (6, "missing_preference_output"),
        (8, "identical_preference_outputs"),
        (9, "identical_preference_outputs"),
    ]
    assert "'non_preferred_output'" in report.errors[0].message and "'preferred_output'" in report.errors[1].message
