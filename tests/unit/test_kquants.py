"""The numpy k-quant quantizers (Q4_K, Q6_K): llama.cpp's bytes, their error, and the layout ``gguf`` reads."""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest

from tuneloop.models import kquants

Q4_K, Q6_K = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K


def weights(kind: str, rows: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, 1024)) if kind == "gaussian" else rng.uniform(-1, 1, (rows, 1024))
    return (values * 0.02).astype(np.float32)  # a weight matrix's magnitude


def relative_rms(x: np.ndarray, qtype) -> float:
    y = gguf.quants.dequantize(kquants.quantize(x, qtype), qtype)
    return float(np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2)))


def naive_rms(x: np.ndarray, qtype) -> float:
    """Per sub-block min/max (Q4_K: 4-bit levels over min..max per 32) or absmax (Q6_K: 6-bit per 16)
    quantization, with exact float32 scales: the baseline llama.cpp's search must beat."""
    if qtype == Q4_K:
        g = x.reshape(-1, 32)
        lo, hi = g.min(axis=1, keepdims=True), g.max(axis=1, keepdims=True)
        step = (hi - lo) / 15
        y = lo + np.rint((g - lo) / step) * step
    else:
        g = x.reshape(-1, 16)
        peak = np.take_along_axis(g, np.abs(g).argmax(axis=1)[:, None], axis=1)
        step = peak / -32
        y = np.clip(np.rint(g / step), -32, 31) * step
    return float(np.sqrt(np.mean((g - y) ** 2) / np.mean(g**2)))


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize(("qtype", "bound"), [(Q4_K, 0.08), (Q6_K, 0.02)])
def test_the_error_is_small_and_beats_min_max(kind, qtype, bound):
    """Relative RMS error under the bound (Gaussian: Q4_K 0.0715, Q6_K 0.0178; uniform: 0.0549, 0.0136),
    and below a plain min/max quantization's with unrounded scales (0.0782, 0.0188; 0.0610, 0.0146)."""
    x = weights(kind)
    error = relative_rms(x, qtype)
    assert error < bound, error
    assert error < naive_rms(x, qtype), (error, naive_rms(x, qtype))


def test_llama_cpps_own_quantization_test_passes():
    """llama.cpp's test-quantize-fns: ``0.1 + 2 cos(i)`` over 4096 values, ``sqrt(sum(d**2)) / n`` under
    0.002 (its MAX_QUANTIZATION_TOTAL_ERROR)."""
    x = (0.1 + 2 * np.cos(np.arange(4096, dtype=np.float32))).astype(np.float32)
    for qtype in (Q4_K, Q6_K):
        y = gguf.quants.dequantize(kquants.quantize(x, qtype), qtype)
        assert np.sqrt(np.sum((x - y).astype(np.float64) ** 2)) / x.size < 0.002, qtype.name


def reproducible_data(n: int = 64 * 256) -> np.ndarray:
    """Bell-shaped values from integer hashes (exact on every machine), their scale varying by block."""
    i = np.arange(n, dtype=np.int64)
    hashes = ((2654435761, 1), (2246822519, 7), (3266489917, 13), (668265263, 29))
    u = sum(((i * a + c) % 2**32) / 2**32 for a, c in hashes)
    return ((u - 2) * 2.0 ** ((i // 256) % 5 - 2)).astype(np.float32).reshape(-1, 1024)


@pytest.mark.parametrize(
    ("qtype", "digest"),
    [
        (Q4_K, "55a6de31721bf5764f2fd84c683b8884c5d2a3bfbcad643f196741a8139519db"),
        (Q6_K, "6ed2492eee65d31611785d457f22fbb5b4eb7aff11c37db5623093ca1e46a183"),
    ],
)
def test_the_bytes_are_llama_cpps(qtype, digest):
    """The same bytes as llama.cpp's ``quantize_row_q4_K_ref`` / ``quantize_row_q6_K_ref`` (the digests
    of its output for this data: ggml's ggml-quants.c as vendored by ggml-python 0.0.45, gcc -O2)."""
    assert hashlib.sha256(kquants.quantize(reproducible_data(), qtype).tobytes()).hexdigest() == digest


def test_scale_and_min_codes_pack_as_gguf_unpacks_them():
    codes = np.random.default_rng(1).integers(0, 64, (50, 16)).astype(np.uint8)
    scales, mins = gguf.quants.Q4_K.get_scale_min(kquants.pack_scale_min(codes[:, :8], codes[:, 8:]))
    assert np.array_equal(scales, codes[:, :8]) and np.array_equal(mins, codes[:, 8:])


def test_q4_k_levels_scales_and_mins_land_where_gguf_reads_them():
    """Values that are exactly ``scale * level - min`` (levels 0..15 in every sub-block of 32): the scale
    and min codes come back exact, and every value to within fp16 rounding (each level in its place)."""
    rng = np.random.default_rng(2)
    levels = rng.integers(0, 16, (4, 8, 32))
    levels[..., 0], levels[..., 1] = 0, 15
    scale, offset = rng.choice([1, 3], (4, 8, 1)), rng.integers(0, 8, (4, 8, 1))
    offset[:, 0] = 7  # the largest min in each block
    scale[:, 0] = 3
    x = (scale * levels - offset).astype(np.float32).reshape(4, 256)
    blocks = kquants.quantize(x, Q4_K)
    codes_scale, codes_min = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])
    assert np.array_equal(codes_scale, 21 * scale[..., 0]) and np.array_equal(codes_min, 9 * offset[..., 0])
    assert np.array_equal(np.rint(gguf.quants.dequantize(blocks, Q4_K)), x)


def test_q6_k_levels_land_where_gguf_reads_them():
    """Integers -32..31 with -32 in every sub-block of 16: scale 1 everywhere, every value back exactly."""
    x = np.random.default_rng(3).integers(-32, 32, (4, 16, 16))
    x[..., 3] = -32
    x = x.astype(np.float32).reshape(4, 256)
    blocks = kquants.quantize(x, Q6_K)
    assert np.array_equal(gguf.quants.dequantize(blocks, Q6_K), x)
    assert np.all(blocks[:, 192:208].view(np.int8) == -128)  # the int8 scales


def test_zero_and_constant_blocks_and_other_types():
    x = np.zeros((3, 256), np.float32)
    x[1], x[2, :32] = -0.5, 0.25
    for qtype in (Q4_K, Q6_K):
        y = gguf.quants.dequantize(kquants.quantize(x, qtype), qtype)
        assert np.allclose(y, x, atol=1e-3) and np.array_equal(y[0], x[0]), qtype.name
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize(np.ones((2, 288), np.float32), Q4_K)
    q8 = gguf.GGMLQuantizationType.Q8_0
    assert np.array_equal(kquants.quantize(x, q8), gguf.quants.quantize(x, q8))  # handed to gguf
