"""Decode attention: the C kernel against the torch path, batch invariance, and the runner on both."""

from __future__ import annotations

import pytest
import torch

from tuneloop.engine import native
from tuneloop.engine.attention import DecodeAttention
from tuneloop.engine.runner import ModelRunner

from helpers import greedy_batch, greedy_runner

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"no C kernels here: {native.error()}")

LAYERS, SLOTS, CAPACITY = 2, 8, 32
#: (head size, query heads, key/value heads): the kernel with sizes given at run time (D 16, groups 3, 5)
#: and its register-resident one (D 64, groups of 1 to 4 query heads per key/value head)
SHAPES = [(16, 6, 2), (16, 10, 2), (64, 2, 2), (64, 4, 2), (64, 9, 3), (64, 8, 2)]
D, HEADS, KV = SHAPES[0]


@pytest.fixture(params=SHAPES, ids=lambda s: f"D{s[0]}-H{s[1]}-KV{s[2]}")
def shape(request, monkeypatch):
    """Run the test with this module's D, HEADS and KV set to each of ``SHAPES``."""
    for name, value in zip(("D", "HEADS", "KV"), request.param, strict=True):
        monkeypatch.setitem(globals(), name, value)
    return request.param


def caches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (LAYERS, SLOTS, KV, CAPACITY, D)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def step(slots: list[int], positions: list[int], seed: int = 1):
    """New tokens' q, k, v and cos/sin for ``slots`` at ``positions`` (the same per slot whatever the batch)."""
    rows = []
    for slot in slots:
        g = torch.Generator().manual_seed(seed * 100 + slot)
        angle = torch.randn(D // 2, generator=g)
        rows.append((torch.randn(HEADS * D, generator=g), torch.randn(KV * D, generator=g),
                     torch.randn(KV * D, generator=g), torch.cat([angle, angle])))  # fmt: skip
    q, k, v, angles = (torch.stack(parts) for parts in zip(*rows, strict=True))
    return q, k, v, angles.cos(), angles.sin()


def run(slots, positions, use_kernel: bool, seed: int = 0):
    k_cache, v_cache = caches(seed)
    q, k, v, cos, sin = step(slots, positions)
    attention = DecodeAttention(k_cache, v_cache, slots, positions, cos, sin, HEADS, native.library())
    out = attention(1, q, k, v) if use_kernel else attention.torch(1, q, k, v)
    return out, k_cache, v_cache


@needs_kernels
def test_kernel_matches_torch_and_writes_the_same_cache(shape):
    slots, positions = [5, 0, 3, 7, 2], [9, 0, 31, 4, 17]  # unsorted, with gaps; a first token; a full slot
    out, k_cache, v_cache = run(slots, positions, use_kernel=True)
    ref, k_ref, v_ref = run(slots, positions, use_kernel=False)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(k_cache, k_ref, atol=1e-6) and torch.equal(v_cache, v_ref)
    assert not torch.equal(k_cache, caches()[0])  # the new keys were written


@needs_kernels
def test_a_token_gives_the_same_bits_alone_or_in_a_batch(shape):
    together, _, _ = run([5, 0, 3, 7, 2], [9, 0, 31, 4, 17], use_kernel=True)
    for i, (slot, position) in enumerate(zip([5, 0, 3, 7, 2], [9, 0, 31, 4, 17], strict=True)):
        alone, _, _ = run([slot], [position], use_kernel=True)
        assert torch.equal(alone[0], together[i])


@pytest.mark.parametrize("use_kernel", [pytest.param(True, marks=needs_kernels), False])
def test_runner_decodes_like_generate_with_either_attention(tiny_model_dir, monkeypatch, use_kernel):
    from transformers import AutoModelForCausalLM

    if not use_kernel:
        monkeypatch.setattr(native, "library", lambda: None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = list(range(300, 330))
    expected = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    runner = ModelRunner(model, 3, 256)
    assert greedy_runner(runner, 2, ids, 12) == expected[0, len(ids) :].tolist()
    # and in a batch with another sequence, each row as alone
    other = list(range(400, 410))
    tokens = greedy_batch(runner, [ids, other], [None, None], 12)
    assert tokens[0] == expected[0, len(ids) :].tolist()
    assert tokens[1] == greedy_runner(ModelRunner(model, 1, 256), 0, other, 12)


@needs_kernels
def test_a_short_prefill_through_the_kernel_matches_torch(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tuneloop.engine import runner as runner_module

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = list(range(500, 540))

    def prefill(short: int) -> tuple[torch.Tensor, torch.Tensor, ModelRunner]:
        monkeypatch.setattr(runner_module, "SHORT_PREFILL", short)
        runner = ModelRunner(model, 2, 128)
        runner.prefill(1, prompt[:25], None)
        return runner.prefill(1, prompt[25:], None), runner.k_cache[:, 1, :, :40].clone(), runner  # a cached prefix

    kernel_logits, kernel_keys, _ = prefill(64)
    torch_logits, torch_keys, _ = prefill(0)
    assert torch.allclose(kernel_logits, torch_logits, atol=1e-4)
    assert torch.allclose(kernel_keys, torch_keys, atol=1e-5)


@needs_kernels
def test_float16_caches_hold_rounded_keys_and_give_the_float32_attention_of_them(shape):
    slots, positions = [5, 0, 3, 7, 2], [9, 0, 31, 4, 17]
    k32, v32 = caches()
    k16, v16 = k32.half(), v32.half()
    q, k, v, cos, sin = step(slots, positions)
    lib = native.library()
    out16 = DecodeAttention(k16, v16, slots, positions, cos, sin, HEADS, lib)(1, q, k, v)
    # the attention in float32 over the rounded caches (the new keys and values kept in float32)
    k_ref, v_ref = k16.float(), v16.float()
    ref = DecodeAttention(k_ref, v_ref, slots, positions, cos, sin, HEADS, lib).torch(1, q, k, v)
    assert torch.allclose(out16, ref, atol=2e-3) and not torch.equal(out16, ref)
    assert torch.allclose(k16.float(), k_ref, atol=2e-3) and torch.equal(v16, v_ref.half())  # written, rounded
    assert not torch.equal(k16, k32.half())
    for i, (slot, position) in enumerate(zip(slots, positions, strict=True)):  # batch invariance holds
        alone_k, alone_v = k32.half(), v32.half()
        q1, k1, v1, c1, s1 = step([slot], [position])
        alone = DecodeAttention(alone_k, alone_v, [slot], [position], c1, s1, HEADS, lib)(1, q1, k1, v1)
        assert torch.equal(alone[0], out16[i])
