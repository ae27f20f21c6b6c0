"""Decoding from int8 codes: the C kernel's numbers, batch invariance, and lossless GGUF packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuneloop.engine import native
from tuneloop.engine.packed_weights import pack_model
from tuneloop.engine.quantized import GroupQuantized, quantize_int8
from tuneloop.engine.runner import ModelRunner

from helpers import greedy_batch, greedy_runner

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no C kernels here: {native.error()}")


def random_codes(n: int, k: int, offset: bool, seed: int = 0, bits: int = 8) -> GroupQuantized:
    g = torch.Generator().manual_seed(seed)
    if bits == 4:  # Q4_1-like, packed two per byte: codes 0..15, scale and minimum per group
        packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
        scale, minimum = torch.rand(n, k // 32, generator=g) * 0.1, -torch.rand(n, k // 32, generator=g)
        return GroupQuantized(packed, scale, minimum if offset else None)
    if offset:  # Q4_1-like, one code per byte
        codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int8)
        return GroupQuantized(codes, torch.rand(n, k // 32, generator=g) * 0.1, -torch.rand(n, k // 32, generator=g))
    codes = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return GroupQuantized(codes, torch.rand(n, k // 32, generator=g) * 0.01, None)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("offset", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17])
def test_kernel_matches_float_matmul(offset, rows, bits):
    codes = random_codes(37, 96, offset, bits=bits)  # 37 outputs: a tail that is not a multiple of 4
    x = torch.randn(rows, 96)
    expected = x.double() @ codes.dequantize().double().T
    assert torch.allclose(codes.matmul(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_4bit_codes_unpack_as_gguf_packs_them():
    packed = torch.tensor([[0x21, 0xF3] + [0] * 14], dtype=torch.uint8)  # one group of 32 codes
    codes = GroupQuantized(packed, torch.ones(1, 1), None)
    assert codes.shape == (1, 32) and codes.bits == 4
    assert codes.unpacked()[0, [0, 1, 16, 17]].tolist() == [1, 3, 2, 15]  # low nibbles first, then high


@pytest.mark.parametrize("bits", [8, 4])
def test_a_row_gives_the_same_bits_in_any_batch(bits):
    codes = random_codes(64, 128, offset=True, seed=1, bits=bits)
    x = torch.randn(9, 128)
    together = codes.matmul(x)
    for i in range(9):
        assert torch.equal(codes.matmul(x[i : i + 1])[0], together[i])
    assert torch.equal(codes.matmul(x[3:7]), together[3:7])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        GroupQuantized(torch.zeros(4, 40, dtype=torch.int8), torch.ones(4, 1), None)
    with pytest.raises(ValueError):
        random_codes(4, 64, offset=False).matmul(torch.randn(2, 32))


def test_quantize_int8_error_is_at_most_half_a_step():
    w = torch.randn(48, 64)
    codes = quantize_int8(w)
    step = codes.scale.repeat_interleave(32, dim=1)
    assert codes.codes.abs().max() <= 127 and codes.offset is None
    assert ((codes.dequantize() - w).abs() <= step / 2 + 1e-7).all()


# -- lossless packing from a GGUF file -------------------------------------------------------------
def _llama_cpp_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter stores q/k projections in (for rotary embeddings)."""
    n = rows.shape[0]
    return rows.reshape(n_head, 2, n // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@pytest.fixture
def gguf_model(tiny_model_dir, tmp_path):
    """The tiny model as a GGUF would hold it: Q4_1 projections (q/k permuted), a Q8_0 embedding/head,
    the float32 model set to their dequantized values; layer 1's down projection does not match."""
    import gguf
    from gguf.quants import dequantize, quantize
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    cfg = model.config
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}  # fmt: skip
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    kind = gguf.GGMLQuantizationType
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for hf, short in names.items():
                module = getattr(layer.self_attn if hf in heads or hf in ("v_proj", "o_proj") else layer.mlp, hf)
                blocks = quantize(module.weight.numpy(), kind.Q4_1)
                module.weight.copy_(torch.from_numpy(dequantize(blocks, kind.Q4_1)))
                if hf in heads:
                    blocks = _llama_cpp_permute(blocks, heads[hf])
                if (i, hf) == (1, "down_proj"):
                    blocks = quantize(np.random.default_rng(0).standard_normal(module.weight.shape, np.float32),
                                      kind.Q4_1)  # fmt: skip
                writer.add_tensor(f"blk.{i}.{short}.weight", blocks, raw_dtype=kind.Q4_1)
        embed = model.model.embed_tokens.weight
        blocks = quantize(embed.numpy(), kind.Q8_0)
        embed.copy_(torch.from_numpy(dequantize(blocks, kind.Q8_0)))
        writer.add_tensor("token_embd.weight", blocks, raw_dtype=kind.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tmp_path / "tiny.gguf"


def test_gguf_blocks_pack_exactly_the_layers_they_reproduce(gguf_model):
    model, path = gguf_model
    packed = pack_model(model, "auto", path)
    layers = len(model.model.layers)
    assert "model.layers.1.mlp.down_proj" not in packed  # its blocks are another weight's
    assert len(packed) == 7 * layers - 1 + 1  # every other projection, and the tied head
    for name, codes in packed.items():
        assert torch.equal(codes.dequantize(), model.get_submodule(name).weight)
        assert codes.bits == (8 if name == "lm_head" else 4)  # Q4_1 blocks stay packed, two codes per byte
    assert pack_model(model, "float32", path) == {}
    assert len(pack_model(model, "int8", path)) == 7 * layers + 1  # the odd one quantized


def test_decoding_from_gguf_codes_matches_float32_and_hugging_face(gguf_model):
    model, path = gguf_model
    ids = list(range(200, 230))
    with torch.inference_mode():
        reference = model.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
    quantized = ModelRunner(model, 2, 256, pack_model(model, "auto", path))
    assert len(quantized.packed) > 0
    assert greedy_runner(quantized, 0, ids, 16) == reference[0, len(ids) :].tolist()


def test_int8_decode_batch_equals_solo_runs(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    packed = pack_model(model, "int8")
    prompts = [list(range(300, 320)), list(range(400, 425)), list(range(500, 512))]
    solo = [greedy_runner(ModelRunner(model, 1, 256, packed), 0, p, 10) for p in prompts]
    assert greedy_batch(ModelRunner(model, 3, 256, packed), prompts, [None] * 3, 10) == solo


def test_the_avx2_build_agrees_where_avx512_is_used(monkeypatch):
    """Machines without AVX-512 get the 8-lane build: check every kernel of it, whatever this CPU has."""
    import ctypes

    from tuneloop.engine.lora_weights import LoraAdapter

    avx2 = native.load(native.build(native.cpu_flags() - {"avx512f"}))
    for bits in (8, 4):
        codes = random_codes(37, 96, offset=True, seed=2, bits=bits)
        x = torch.randn(11, 96)
        y = torch.empty(11, 37)
        kernel = avx2.tl_qmatmul4 if bits == 4 else avx2.tl_qmatmul
        kernel(codes.codes.data_ptr(), codes.scale.data_ptr(), codes.offset.data_ptr(), x.data_ptr(), y.data_ptr(),
               ctypes.c_int64(11), ctypes.c_int64(37), ctypes.c_int64(96))  # fmt: skip
        assert torch.allclose(y, codes.matmul(x), rtol=1e-5, atol=1e-5)
    # attention, LoRA, norms and gating: the runner on the AVX2 build decodes as on this CPU's
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    g = torch.Generator().manual_seed(1)
    shapes = {(0, "q_proj"): (64, 64), (1, "down_proj"): (96, 64)}  # (in, out) of two projections
    adapter = LoraAdapter("a", {key: (torch.randn(k, 8, generator=g), torch.randn(8, n, generator=g))
                                for key, (k, n) in shapes.items()})  # fmt: skip
    ids = list(range(10, 30))
    expected = [greedy_runner(ModelRunner(model, 1, 64), 0, ids, 8, a) for a in (None, adapter)]
    assert expected[0] != expected[1]  # the adapter matters
    monkeypatch.setattr(native, "library", lambda: avx2)
    runner = ModelRunner(model, 1, 64)
    assert runner._kernels is avx2 and runner._lora_plan([adapter]).lib is avx2
    assert [greedy_runner(ModelRunner(model, 1, 64), 0, ids, 8, a) for a in (None, adapter)] == expected


@pytest.mark.real_model
def test_the_bundled_model_decodes_losslessly_from_its_gguf_blocks(smollm2_converted):
    from transformers import AutoModelForCausalLM

    from tuneloop.models.catalog import builtin_gguf_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_converted, dtype=torch.float32).eval()
    packed = pack_model(model, "auto", builtin_gguf_path())
    assert len(packed) == 7 * model.config.num_hidden_layers + 1  # every projection (Q4_1) and the head (Q8_0)
    codes_bytes = sum(c.nbytes for c in packed.values())
    assert codes_bytes < 0.25 * sum(p.numel() * p.element_size() for p in model.parameters())
    ids = list(range(1000, 1040))
    from_codes = greedy_runner(ModelRunner(model, 1, 256, packed), 0, ids, 24)
    assert from_codes == greedy_runner(ModelRunner(model, 1, 256), 0, ids, 24)


def test_an_unreadable_gguf_leaves_the_model_in_float32(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 20)
    assert pack_model(model, "auto", broken) == {}
    assert len(pack_model(model, "int8", broken)) == 7 * len(model.model.layers) + 1


def test_gguf_codes_are_cached_and_checked_again(gguf_model, tmp_path):
    model, path = gguf_model
    cache = tmp_path / "cache"
    first = pack_model(model, "auto", path, cache_dir=cache)
    (cached,) = cache.glob("tiny-*.safetensors")
    again = pack_model(model, "auto", path, cache_dir=cache)
    assert again.keys() == first.keys()
    assert all(torch.equal(again[n].dequantize(), first[n].dequantize()) for n in first)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)  # the weights changed since the cache was written
    changed = pack_model(model, "auto", path, cache_dir=cache)
    assert "model.layers.0.mlp.up_proj" not in changed and len(changed) == len(first) - 1
    assert cached.is_file()


def test_a_full_disk_or_a_damaged_cache_keeps_the_gguf_codes(gguf_model, tmp_path, monkeypatch, caplog):
    import safetensors.torch

    model, path = gguf_model
    cache = tmp_path / "cache"
    expected = pack_model(model, "auto", path).keys()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", disk_full)
        assert pack_model(model, "auto", path, cache_dir=cache).keys() == expected  # int8 decoding goes on
    assert "could not write the int8 code cache" in caplog.text and "No space left" in caplog.text
    assert not list(cache.glob("*.safetensors"))
    assert pack_model(model, "auto", path, cache_dir=cache).keys() == expected  # the next start writes it
    (cached,) = cache.glob("tiny-*.safetensors")
    cached.write_bytes(cached.read_bytes()[:100])  # damaged: rebuilt, not a reason to lose the codes
    assert pack_model(model, "auto", path, cache_dir=cache).keys() == expected
    assert "unreadable" in caplog.text and cached.stat().st_size > 100
