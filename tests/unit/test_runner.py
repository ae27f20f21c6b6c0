"""The serving runner: same logits as Hugging Face, LoRA rows as PEFT computes them, batch-invariant."""

from __future__ import annotations

import pytest
import torch

from tuneloop.engine import native
from tuneloop.engine.lora_weights import load_lora
from tuneloop.engine.runner import ModelRunner

from helpers import greedy_batch, greedy_runner

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"no C kernels here: {native.error()}")


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


@pytest.mark.parametrize("kernels", [pytest.param(True, marks=needs_kernels), False], ids=["kernels", "torch"])
def test_mixed_adapter_batch_matches_peft_and_solo_runs(tiny, tiny_model_dir, adapters, monkeypatch, kernels):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not kernels:  # where the C kernels cannot be built: torch attention, stacked adapters
        monkeypatch.setattr(native, "library", lambda: None)

    prompts = [list(range(300, 320)), list(range(400, 425)), list(range(500, 512))]
    loaded = [load_lora(f"a{i}", path) for i, path in enumerate(adapters)]
    choice = [loaded[0], None, loaded[1]]
    solo = [greedy_runner(ModelRunner(tiny, 1, 512), 0, p, 12, a) for p, a in zip(prompts, choice, strict=True)]

    runner = ModelRunner(tiny, 4, 512)
    assert greedy_batch(runner, prompts, choice, 12) == solo  # the batch changes nothing
    assert bool(runner._stacks) is not kernels  # torch mixes adapters through stacked factors

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(base, str(adapters[0])).eval()
    assert solo[0] == greedy_hf(peft_model, prompts[0], 12)
    assert solo[0] != greedy_hf(tiny, prompts[0], 12)  # the adapter matters


def test_cache_grows_beyond_initial_capacity(tiny):
    ids = list(range(1000, 1300))  # longer than the initial 256-token capacity
    assert greedy_runner(ModelRunner(tiny, 1, 1024), 0, ids, 5) == greedy_hf(tiny, ids, 5)


def two_adapters(k: int = 32, n: int = 100, half: bool = False):
    """Two adapters on layer 0: ranks 4 (zero-padded to 8) and 16, the second without v_proj."""
    from tuneloop.engine.lora_weights import LoraAdapter

    g = torch.Generator().manual_seed(0)

    def factors(rank: int, scale: float):
        return torch.randn(k, rank, generator=g), torch.randn(rank, n, generator=g) * scale

    first = LoraAdapter("a", {(0, "q_proj"): factors(4, 2.0), (0, "v_proj"): factors(4, 2.0)}, half)
    second = LoraAdapter("b", {(0, "q_proj"): factors(16, 0.5)}, half)
    return first, second


def lora_plan(kind: str, adapters, groups: list[slice]):
    from tuneloop.engine.lora_weights import LoraGroups, LoraRows, StackedLora, StackRows, stack_adapters

    if kind == "kernel":
        return LoraRows(native.library(), list(adapters), [groups[0].start, *(g.stop for g in groups)])
    if kind == "stack":
        return StackedLora(stack_adapters(tuple(adapters)), StackRows.of(groups))
    return LoraGroups(list(zip(adapters, groups, strict=True)))


@pytest.mark.parametrize("kind", [pytest.param("kernel", marks=needs_kernels), "stack", "loop"])
@pytest.mark.parametrize("sizes", [(2, 2), (2, 3), (6, 1)])  # equal groups, unequal ones, more than 4 rows
def test_every_lora_plan_adds_each_rows_own_adapter(kind, sizes):
    adapters = two_adapters()
    groups = [slice(1, 1 + sizes[0]), slice(1 + sizes[0], 1 + sum(sizes))]  # row 0: the base model
    plan = lora_plan(kind, adapters, groups)
    x = torch.randn(1 + sum(sizes), 32, generator=torch.Generator().manual_seed(1))
    for name in ("q_proj", "v_proj", "o_proj"):  # o_proj: in neither adapter
        expected = torch.zeros(len(x), 100)
        for adapter, span in zip(adapters, groups, strict=True):
            if (0, name) in adapter.factors:
                at, bt = adapter.factors[(0, name)]
                expected[span] = (x[span] @ at) @ bt
        got = torch.zeros(len(x), 100)
        plan.add(got, x, 0, name)
        assert torch.allclose(got, expected, atol=1e-4)
        assert got[0].abs().max() == 0


@needs_kernels
@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
def test_the_lora_kernel_gives_a_row_the_same_bits_in_any_batch(half):
    adapters = two_adapters(half=half)
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    together = torch.zeros(8, 100)
    lora_plan("kernel", adapters, [slice(1, 6), slice(6, 8)]).add(together, x, 0, "q_proj")
    for row, adapter in [(1, adapters[0]), (4, adapters[0]), (5, adapters[0]), (7, adapters[1])]:
        alone = torch.zeros(1, 100)
        lora_plan("kernel", [adapter], [slice(0, 1)]).add(alone, x[row : row + 1], 0, "q_proj")
        assert torch.equal(alone[0], together[row])


@needs_kernels
@pytest.mark.parametrize("sizes", [(2, 3), (6, 1)])
def test_float16_factors_give_the_float32_update_to_their_precision(sizes):
    exact, half = two_adapters(), two_adapters(half=True)
    assert half[0].factors[(0, "q_proj")][0].dtype == torch.float16 and half[0].nbytes * 2 == exact[0].nbytes
    groups = [slice(1, 1 + sizes[0]), slice(1 + sizes[0], 1 + sum(sizes))]
    x = torch.randn(1 + sum(sizes), 32, generator=torch.Generator().manual_seed(1))
    for name in ("q_proj", "v_proj"):
        want, got = torch.zeros(len(x), 100), torch.zeros(len(x), 100)
        lora_plan("kernel", exact, groups).add(want, x, 0, name)
        lora_plan("kernel", half, groups).add(got, x, 0, name)
        assert not torch.equal(got, want) and torch.allclose(got, want, rtol=0, atol=2e-3 * want.abs().max())
    with pytest.raises(ValueError, match="mixes"):
        lora_plan("kernel", [exact[0], half[1]], groups)


@needs_kernels
@pytest.mark.parametrize("activations", ["float32", "int8"])
def test_prompts_joining_a_decode_step_change_no_row(tiny, adapters, activations):
    from tuneloop.engine.packed_weights import int8_activations, pack_model

    if activations == "int8" and not int8_activations("auto"):
        pytest.skip("no int8-activation kernel on this CPU")
    packed = pack_model(tiny, "int8", activations=activations)  # every projection from codes
    loaded = [load_lora(f"a{i}", path) for i, path in enumerate(adapters)]
    running = [(list(range(300, 320)), loaded[0]), (list(range(400, 425)), None)]
    joining = [(list(range(500, 512)), loaded[1]), (list(range(600, 640)), loaded[0])]

    def alone(ids, adapter):  # the prompt, then one decode step, in a runner of its own
        runner = ModelRunner(tiny, 1, 256, packed)
        first = runner.prefill(0, ids, adapter)
        return first, runner.step([0], [[int(first.argmax())]], [adapter])[0]

    runner = ModelRunner(tiny, 4, 256, packed)
    assert runner.joins_prompts and not ModelRunner(tiny, 1, 256).joins_prompts  # float32 weights: MKL
    firsts = [runner.prefill(slot, ids, a) for slot, (ids, a) in enumerate(running)]
    # one step: the running sequences' next tokens and the joining prompts, adapters mixed
    step = runner.step([0, 2, 1, 3], [[int(firsts[0].argmax())], joining[0][0], [int(firsts[1].argmax())],
                                      joining[1][0]], [loaded[0], loaded[1], None, loaded[0]])  # fmt: skip
    expected = [alone(*running[0])[1], alone(*joining[0])[0], alone(*running[1])[1], alone(*joining[1])[0]]
    for got, want in zip(step, expected, strict=True):
        assert torch.equal(got, want)
    assert runner.lengths[:4] == [21, 26, 12, 40]
    # the joined prompts decode on as if prefilled alone
    after = runner.step([2, 3], [[int(step[1].argmax())], [int(step[3].argmax())]], [loaded[1], loaded[0]])
    assert torch.equal(after[0], alone(*joining[0])[1]) and torch.equal(after[1], alone(*joining[1])[1])


@needs_kernels
@pytest.mark.parametrize("activations", ["float32", "int8"])
def test_a_long_prompt_gives_the_same_bits_however_it_is_split(tiny, activations):
    from tuneloop.engine.packed_weights import int8_activations, pack_model
    from tuneloop.engine.quantized import max_rows

    if activations == "int8" and not int8_activations("auto"):
        pytest.skip("no int8-activation kernel on this CPU")
    packed = pack_model(tiny, "int8", activations=activations)
    limit = max_rows()
    prompt = list(range(700, 700 + 2 * limit + 50))  # more than two steps' worth
    whole = ModelRunner(tiny, 2, 1024, packed).prefill(0, prompt, None)  # in steps of `limit` tokens
    runner = ModelRunner(tiny, 2, 1024, packed)
    runner.prefill(0, prompt[:37], None)
    runner.prefill(0, prompt[37 : 32 + limit], None)
    assert torch.equal(runner.prefill(0, prompt[32 + limit :], None), whole)
    runner.start(1, cached=100, source=0)  # a cached prefix from another slot, then the rest
    assert torch.equal(runner.prefill(1, prompt[100:], None), whole)
    with pytest.raises(ValueError, match=f"up to {limit} tokens"):
        runner.step([0, 1], [[1] * limit, [2]], [None, None])


@needs_kernels
def test_a_runner_on_codes_gives_back_the_float32_weights_memory_and_loses_nothing(tiny_model_dir):
    import sys

    from transformers import AutoModelForCausalLM

    from tuneloop.engine.packed_weights import pack_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()  # memory-mapped
    weights = {name: p.clone() for name, p in model.named_parameters()}
    ids = list(range(300, 330))
    expected = greedy_hf(model, ids, 8)
    runner = ModelRunner(model, 1, 256, pack_model(model, "int8"))
    assert runner.joins_prompts and ModelRunner(model, 1, 256).paged_out_bytes == 0  # float32 runs keep them
    if sys.platform.startswith("linux"):
        assert runner.paged_out_bytes > 0
    # the pages come back from the file on first touch: a float32 runner decodes as before
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert greedy_runner(ModelRunner(model, 1, 256), 0, ids, 8) == expected


def test_a_step_refuses_prompt_tails_it_cannot_join(tiny):
    runner = ModelRunner(tiny, 2, 256)  # float32 weights: prompts get passes of their own
    with pytest.raises(ValueError, match="one token per sequence"):
        runner.step([0, 1], [[5], [6, 7]], [None, None])
    runner.step([0, 1], [[5], [6]], [None, None])
    assert runner.lengths[:2] == [1, 1]
