"""The serving runner: same logits as Hugging Face, LoRA rows as PEFT computes them, batch-invariant."""

from __future__ import annotations

import pytest
import torch

from tuneloop.serve.lora_weights import load_lora
from tuneloop.serve.runner import ModelRunner

from helpers import greedy_runner


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    from tests_lora import make_adapters

    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"), 2)


def greedy_hf(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids) :].tolist()


def test_prefill_logits_match_hugging_face(tiny):
    ids = list(range(100, 140))
    runner = ModelRunner(tiny, 2, 512)
    with torch.inference_mode():
        ref = tiny(torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(runner.prefill(0, ids, None), ref, atol=1e-4)


def test_greedy_decode_matches_generate(tiny):
    ids = list(range(200, 230))
    assert greedy_runner(ModelRunner(tiny, 2, 512), 1, ids, 20) == greedy_hf(tiny, ids, 20)


def test_mixed_adapter_batch_matches_peft_and_solo_runs(tiny, tiny_model_dir, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompts = [list(range(300, 320)), list(range(400, 425)), list(range(500, 512))]
    loaded = [load_lora(f"a{i}", path) for i, path in enumerate(adapters)]
    choice = [loaded[0], None, loaded[1]]
    solo = [greedy_runner(ModelRunner(tiny, 1, 512), 0, p, 12, a) for p, a in zip(prompts, choice, strict=True)]

    runner = ModelRunner(tiny, 4, 512)
    tokens = [int(runner.prefill(s, p, a).argmax()) for s, (p, a) in enumerate(zip(prompts, choice, strict=True))]
    outs = [[t] for t in tokens]
    for _ in range(11):
        logits = runner.decode([0, 1, 2], tokens, choice)
        tokens = [int(row.argmax()) for row in logits]
        for out, t in zip(outs, tokens, strict=True):
            out.append(t)
    assert outs == solo  # the batch changes nothing

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(base, str(adapters[0])).eval()
    assert solo[0] == greedy_hf(peft_model, prompts[0], 12)
    assert solo[0] != greedy_hf(tiny, prompts[0], 12)  # the adapter matters


def test_cache_grows_beyond_initial_capacity(tiny):
    ids = list(range(1000, 1300))  # longer than the initial 256-token capacity
    assert greedy_runner(ModelRunner(tiny, 1, 1024), 0, ids, 5) == greedy_hf(tiny, ids, 5)


@pytest.mark.parametrize("sizes", [(2, 2), (2, 3)])  # equal groups (no padding) and unequal ones
def test_stacked_adapters_equal_one_adapter_at_a_time(sizes):
    from tuneloop.serve.lora_weights import LoraAdapter, StackRows, stack_adapters

    g = torch.Generator().manual_seed(0)

    def factors(rank: int, k: int = 32, n: int = 48, scale: float = 2.0):
        return torch.randn(rank, k, generator=g), torch.randn(n, rank, generator=g), scale

    first = LoraAdapter("a", {(0, "q_proj"): factors(4), (0, "v_proj"): factors(4)})
    second = LoraAdapter("b", {(0, "q_proj"): factors(8, scale=0.5)})  # other rank, no v_proj
    stack = stack_adapters((first, second))
    groups = [slice(1, 1 + sizes[0]), slice(1 + sizes[0], 1 + sum(sizes))]  # row 0: the base model
    rows = StackRows.of(groups)
    x = torch.randn(1 + sum(sizes), 32, generator=g)
    for name in ("q_proj", "v_proj"):
        expected = torch.zeros(len(x), 48)
        for adapter, span in zip((first, second), groups, strict=True):
            if (0, name) in adapter.factors:
                a, b, scale = adapter.factors[(0, name)]
                expected[span] = (x[span] @ a.T) @ b.T * scale
        got = torch.zeros(len(x), 48)
        rows.add(got, x, stack.a[(0, name)], stack.b[(0, name)])
        assert torch.allclose(got, expected, atol=1e-5)
    assert got[0].abs().max() == 0
