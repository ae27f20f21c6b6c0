"""Products with int8 activations (``qmatmul_i8.c``): the kernel's numbers against a reference that
rounds the activations the same way, batch invariance, and the runner and settings that use it."""

from __future__ import annotations

import pytest
import torch

from tuneloop.engine import native, packed_weights
from tuneloop.engine.packed_weights import int8_activations, pack_model
from tuneloop.engine.quantized import GroupQuantized, Int8ActivationCodes, round_groups
from tuneloop.engine.runner import ModelRunner

from helpers import greedy_batch, greedy_runner

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no C kernels here: {native.error()}")


def random_weight(n: int, k: int, kind: str, seed: int = 0) -> GroupQuantized:
    """A Q4_1-like (4-bit, own offsets), Q4_0-like (4-bit, offset -8 scale), Q8_0-like or Q8_1-like
    (8-bit, own offsets) weight."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, k // 32, generator=g) * 0.1
    if kind in ("q8", "q8_1"):
        offset = -torch.rand(n, k // 32, generator=g) if kind == "q8_1" else None
        return GroupQuantized(torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8), scale, offset)
    packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
    offset = -8.0 * scale if kind == "q4_0" else -torch.rand(n, k // 32, generator=g)
    return GroupQuantized(packed, scale, offset)


def reference(weight: GroupQuantized, x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as the kernel rounds it, times the dequantized weight, in float64."""
    codes, scale = round_groups(x)
    m, k = x.shape
    rounded = (codes.view(m, k // 32, 32) * scale[:, :, None]).view(m, k)
    return rounded.double() @ weight.dequantize().double().T


@pytest.mark.parametrize("kind", ["q4_1", "q4_0", "q8", "q8_1"])
@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_kernel_matches_the_rounded_product(kind, rows):
    weight = random_weight(37, 96, kind)  # 37 outputs: a block of 16 rows that is only partly used
    codes = Int8ActivationCodes.from_codes(weight)
    # Q4_0's offset became the integer zero point; an 8-bit weight's offsets take in its zero point
    assert codes.zero == {"q4_1": 0, "q4_0": 8, "q8": 128, "q8_1": 0}[kind]
    assert (codes.offset is None) == (kind in ("q4_0", "q8"))
    x = torch.randn(rows, 96) * torch.logspace(-2, 1, 96)  # blocks of very different magnitudes
    expected = reference(weight, x)
    assert torch.allclose(codes.matmul(x).double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_rounding_stays_close_to_float32():
    weight = random_weight(64, 128, "q4_1", seed=3)
    x = torch.randn(5, 128)
    exact = x.double() @ weight.dequantize().double().T
    error = (Int8ActivationCodes.from_codes(weight).matmul(x).double() - exact).norm() / exact.norm()
    assert 1e-6 < error < 1e-2  # lossy, by about a percent of a percent


def test_rounding_reference_matches_gguf_q8_rule():
    x = torch.tensor([[0.5, -1.0, 0.25, 2.0] + [0.0] * 28, [0.0] * 32])
    codes, scale = round_groups(x)
    assert torch.equal(scale, torch.tensor([[2.0], [0.0]]) / 127)
    assert codes[0, :4].tolist() == [32.0, -64.0, 16.0, 127.0] and not codes[1].any()  # 31.75 -> 32


@pytest.mark.parametrize("kind", ["q4_1", "q8"])
def test_a_row_gives_the_same_bits_in_any_batch(kind):
    codes = Int8ActivationCodes.from_codes(random_weight(64, 128, kind, seed=1))
    x = torch.randn(19, 128)  # tiles of 8, 8, 2 and 1 rows
    together = codes.matmul(x)
    for i in range(19):
        assert torch.equal(codes.matmul(x[i : i + 1])[0], together[i])
    assert torch.equal(codes.matmul(x[5:12]), together[5:12])


def test_bad_input_is_refused():
    codes = Int8ActivationCodes.from_codes(random_weight(16, 64, "q8"))
    with pytest.raises(ValueError):
        codes.matmul(torch.randn(2, 32))
    with pytest.raises(ValueError):
        codes.matmul(torch.randn(2, 64, dtype=torch.float64))


def test_settings_decide_the_activations(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert all(isinstance(c, GroupQuantized) for c in pack_model(model, "int8", activations="float32").values())
    packed = pack_model(model, "int8", activations="auto")
    assert len(packed) == 7 * len(model.model.layers) + 1
    assert all(isinstance(c, Int8ActivationCodes) for c in packed.values())
    assert ModelRunner(model, 1, 64, packed).int8_activations
    monkeypatch.setattr(packed_weights.native, "available", lambda: False)  # no C compiler, say
    assert not int8_activations("auto")
    with pytest.raises(RuntimeError, match="int8 activations"):
        int8_activations("int8")


def test_runner_decodes_batches_as_solo_runs_and_close_to_float32(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    packed = pack_model(model, "int8", activations="int8")
    prompts = [list(range(300, 320)), list(range(400, 425)), list(range(500, 512))]
    solo = [greedy_runner(ModelRunner(model, 1, 256, packed), 0, p, 10) for p in prompts]
    assert greedy_batch(ModelRunner(model, 3, 256, packed), prompts, [None] * 3, 10) == solo
    # the logits stay close to float32 activations' on the same codes
    exact = ModelRunner(model, 1, 256, pack_model(model, "int8", activations="float32"))
    rounded = ModelRunner(model, 1, 256, packed)
    a, b = exact.prefill(0, prompts[0], None), rounded.prefill(0, prompts[0], None)
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05 * a.abs().max())


@pytest.mark.parametrize("without", ["avx512f", "avx512_vnni"])
def test_builds_without_vnni_give_the_same_bits(without):
    """An AVX2-only CPU (or AVX-512 without VNNI) gets the vpmaddubsw kernel: exact integer sums and the
    same float operations, so its products equal this CPU's bit for bit, every weight kind, every tile."""
    import ctypes

    other = native.load(native.build(native.cpu_flags() - {without}))
    for kind in ("q4_1", "q4_0", "q8", "q8_1"):
        codes = Int8ActivationCodes.from_codes(random_weight(37, 96, kind, seed=4))
        x = torch.randn(13, 96) * torch.logspace(-2, 1, 96)
        x[2, :32] = 0.0  # an all-zero block
        x[3, 5] = 1e4  # a block whose other inputs round to 0
        for rows in (1, 2, 3, 5, 13):
            y = torch.empty(rows, 37)
            offset = codes.offset.data_ptr() if codes.offset is not None else None
            failed = other.tl_qmatmul_i8(codes.codes.data_ptr(), codes.scale.data_ptr(), offset, x.data_ptr(),
                                         y.data_ptr(), ctypes.c_int64(rows), ctypes.c_int64(37), ctypes.c_int64(96),
                                         ctypes.c_int64(codes.bits), ctypes.c_int64(codes.zero))  # fmt: skip
            assert not failed
            assert torch.equal(y, codes.matmul(x[:rows])), (kind, rows)


def test_the_avx2_build_decodes_the_same_tokens(tiny_model_dir, monkeypatch):
    """The whole int8 path (products, float16 KV cache and attention, norms) on the AVX2 build: the same
    greedy tokens as this CPU's build, for a batch and for one sequence."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = [list(range(300, 320)), list(range(400, 425))]

    def decode() -> list:
        packed = pack_model(model, "int8", activations="int8")
        return [greedy_batch(ModelRunner(model, 2, 256, packed), prompts, [None] * 2, 10),
                greedy_runner(ModelRunner(model, 1, 256, packed), 0, prompts[0], 10)]  # fmt: skip

    expected = decode()
    avx2 = native.load(native.build(native.cpu_flags() - native.AVX512_FLAGS))
    monkeypatch.setattr(native, "library", lambda: avx2)
    assert decode() == expected


@pytest.mark.real_model
def test_int8_activations_stay_close_to_float32_on_the_bundled_model(smollm2_converted):
    """Teacher-forced on float32's own greedy continuations: the same next token almost everywhere,
    and a small KL divergence (the 4-bit weights themselves are a far larger approximation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.models.catalog import builtin_gguf_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_converted, dtype=torch.float32).eval()
    runners = [ModelRunner(model, 4, 256, pack_model(model, "auto", builtin_gguf_path(), activations=a))
               for a in ("float32", "int8")]  # fmt: skip
    assert runners[1].int8_activations and runners[1].k_cache.dtype == torch.float16
    tokenizer = AutoTokenizer.from_pretrained(smollm2_converted)
    questions = ["Why is the sky blue?", "How do bees make honey?", "Write a haiku about winter.", "What is DNA?"]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=False) for q in questions]  # fmt: skip
    logits = [torch.stack([r.prefill(s, p, None) for s, p in enumerate(prompts)]) for r in runners]
    rows = [list(zip(*logits, strict=True))]
    for _ in range(23):  # float32's greedy tokens, fed to both
        tokens = logits[0].argmax(dim=-1).tolist()
        logits = [r.step(list(range(4)), [[t] for t in tokens], [None] * 4) for r in runners]
        rows.append(list(zip(*logits, strict=True)))
    pairs = [pair for step in rows for pair in step]
    agree = sum(int(a.argmax()) == int(b.argmax()) for a, b in pairs) / len(pairs)
    kl = [float((a.log_softmax(-1).exp() * (a.log_softmax(-1) - b.log_softmax(-1))).sum()) for a, b in pairs]
    assert agree >= 0.9 and sum(kl) / len(kl) < 0.02, (agree, sum(kl) / len(kl))


@pytest.mark.real_model
def test_a_long_prompt_on_the_bundled_model_gives_the_same_bits_however_it_is_computed(smollm2_converted):
    """A 700-token prompt in 256-token steps, in uneven pieces, and from another slot's cached
    prefix: the same logits (the real model's shapes: 30 layers, 3 query heads per key/value head)."""
    from transformers import AutoModelForCausalLM

    from tuneloop.models.catalog import builtin_gguf_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_converted, dtype=torch.float32).eval()
    packed = pack_model(model, "auto", builtin_gguf_path(), activations="auto")
    prompt = torch.randint(100, 40000, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    runner = ModelRunner(model, 3, 1024, packed)
    assert runner.joins_prompts
    whole = runner.prefill(0, prompt, None)
    runner.prefill(1, prompt[:100], None)
    runner.prefill(1, prompt[100:401], None)
    assert torch.equal(runner.prefill(1, prompt[401:], None), whole)
    runner.start(2, cached=650, source=0)
    assert torch.equal(runner.prefill(2, prompt[650:], None), whole)
