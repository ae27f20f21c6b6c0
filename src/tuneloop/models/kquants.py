"""GGUF k-quant quantizers (Q4_K, Q6_K) in numpy, after llama.cpp's ``quantize_row_q4_K_ref`` and
``quantize_row_q6_K_ref`` (``ggml/src/ggml-quants.c``), with the byte layout ``gguf.quants`` dequantizes.

The ``gguf`` package dequantizes k-quants but does not quantize them. These functions quantize every
super-block of 256 values of an array at once, in float32 with llama.cpp's order of operations (sums
added one value after another), so their bytes are llama.cpp's reference quantizer's (as tested against
it, built without FMA). A group's values lie along the first axis, so that numpy adds them in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

QK_K = 256  # values per super-block
Q4_K_BYTES = 2 + 2 + 12 + QK_K // 2  # d, dmin (fp16), 8 packed 6-bit scales and mins, 4-bit levels
Q6_K_BYTES = QK_K // 2 + QK_K // 4 + QK_K // 16 + 2  # low 4 bits, high 2 bits, int8 scales, d (fp16)
GROUP_MAX_EPS = 1e-15
_CHUNK = 8192  # super-blocks quantized at once (bounds the temporaries' memory)
f32 = np.float32


def _sum(x: np.ndarray) -> np.ndarray:
    """Sum over the first axis in order (numpy adds row after row), as llama.cpp's loops add in float32."""
    return np.add.reduce(x, axis=0)


def _groups(blocks: np.ndarray, size: int) -> np.ndarray:
    """Float blocks ``(n, 256)`` as groups of ``size`` values, one per column: ``(size, n * 256 // size)``."""
    return np.ascontiguousarray(blocks.reshape(-1, size).T, dtype=np.float32)


def make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and min for each group (column) of ``x`` such that ``x ~ scale * L - min`` with ``L`` in
    ``0..nmax``: the min/max grid, then ``nstep + 1`` grids spanning from the best min so far to the max,
    each refit by weighted least squares, keeping the one of smallest weighted squared error (llama.cpp's
    ``make_qkx2_quants``, ``use_mad`` false). Returns ``(scale, min)``, both >= 0, one per group."""
    hi, lo = x.max(axis=0), np.minimum(x.min(axis=0), 0)
    flat = hi == lo
    sum_w, sum_x = _sum(weights), _sum(weights * x)
    iscale = f32(nmax) / np.where(flat, 1, hi - lo)
    scale = 1 / iscale
    best = _sum(weights * np.square(scale * np.clip(np.rint(iscale * (x - lo)), 0, nmax) + lo - x))
    for step in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / np.where(hi > lo, hi - lo, 1)  # lo: best min
        levels = np.clip(np.rint(iscale * (x - lo)), 0, nmax)
        wl = weights * levels
        sum_l, sum_l2, sum_xl = _sum(wl), _sum(wl * levels), _sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        det = np.where(ok, det, 1)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0  # the min is never above 0: refit the scale alone
        this_scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, 1), this_scale)
        this_min = np.where(positive, f32(0), this_min)
        error = _sum(weights * np.square(this_scale * levels + this_min - x))
        better = ok & (error < best)
        best = np.where(better, error, best)
        scale, lo = np.where(better, this_scale, scale), np.where(better, this_min, lo)
    return np.where(flat, 0, scale).astype(np.float32), (-lo).astype(np.float32)


def pack_scale_min(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Eight 6-bit scale codes and eight 6-bit min codes per block (``(n, 8)`` each, ``0..63``) packed into
    12 bytes, as ``gguf.quants.Q4_K.get_scale_min`` unpacks them."""
    sc, m = scales.astype(np.uint8), mins.astype(np.uint8)
    high = [sc[:, :4] | ((sc[:, 4:] >> 4) << 6), m[:, :4] | ((m[:, 4:] >> 4) << 6)]
    return np.concatenate([*high, (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], axis=-1)


def quantize_q4_k_blocks(blocks: np.ndarray) -> np.ndarray:
    """Q4_K blocks ``(n, 144)`` uint8 from float blocks ``(n, 256)``: per sub-block of 32 a scale and min
    (``make_qkx2_quants``, 4-bit levels, weights ``rms + |x|``), those quantized to 6 bits against the block's
    largest (fp16 ``d`` and ``dmin``), then each value's level recomputed with the stored scale and min."""
    blocks = np.asarray(blocks, dtype=np.float32)
    n, x = blocks.shape[0], _groups(blocks, 32)
    weights = np.sqrt(_sum(x * x) / f32(32)) + np.abs(x)
    scales, mins = (v.reshape(n, 8) for v in make_qkx2_quants(x, weights, 15, -1.0, 0.1, 20))
    max_scale = np.maximum(scales.max(axis=-1, keepdims=True), 0)  # llama.cpp starts both maxima at 0
    max_min = np.maximum(mins.max(axis=-1, keepdims=True), 0)
    with np.errstate(divide="ignore"):
        ls = np.clip(np.rint(np.where(max_scale > 0, f32(63) / max_scale, 0) * scales), 0, 63).astype(np.uint8)
        lm = np.clip(np.rint(np.where(max_min > 0, f32(63) / max_min, 0) * mins), 0, 63).astype(np.uint8)
    d16, dmin16 = (max_scale / f32(63)).astype(np.float16), (max_min / f32(63)).astype(np.float16)
    d = (d16.astype(np.float32) * ls)[..., None]
    dm = (dmin16.astype(np.float32) * lm)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.where(d > 0, np.clip(np.rint((blocks.reshape(n, 8, 32) + dm) / d), 0, 15), 0)
    levels = levels.astype(np.uint8).reshape(n, 4, 2, 32)  # 64 values per 32 bytes: low nibbles, then high
    qs = (levels[:, :, 0] | (levels[:, :, 1] << 4)).reshape(n, QK_K // 2)
    return np.concatenate([d16.view(np.uint8), dmin16.view(np.uint8), pack_scale_min(ls, lm), qs], axis=-1)


def make_qx_quants(x: np.ndarray, nmax: int) -> np.ndarray:
    """A signed scale for each group (column) of ``x`` such that ``x ~ scale * L``, ``L`` in
    ``-nmax..nmax-1``: the grid through the largest magnitude, then 18 grids around it, keeping the best by
    ``x**2``-weighted least squares (llama.cpp's ``make_qx_quants``, ``rmse_type`` 1)."""
    w = x * x
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=0)[None], axis=0)[0]
    zero = np.abs(peak) < GROUP_MAX_EPS
    peak = np.where(zero, 1, peak)
    best_scale = best = np.zeros(x.shape[1:], np.float32)
    for step in (0, *range(-9, 0), *range(1, 10)):
        levels = np.clip(np.rint(-(f32(nmax) + f32(0.1) * f32(step)) / peak * x), -nmax, nmax - 1)
        sum_lx, sum_l2 = _sum(w * x * levels), _sum(w * levels * levels)
        scale = sum_lx / np.where(sum_l2 > 0, sum_l2, 1)
        better = (sum_l2 > 0) & ((step == 0) | (sum_lx * sum_lx > best * sum_l2))  # the first grid is kept
        best_scale, best = np.where(better, scale, best_scale), np.where(better, scale * sum_lx, best)
    return np.where(zero, 0, best_scale).astype(np.float32)


def quantize_q6_k_blocks(blocks: np.ndarray) -> np.ndarray:
    """Q6_K blocks ``(n, 210)`` uint8 from float blocks ``(n, 256)``: a signed scale per sub-block of 16
    (``make_qx_quants``, 6-bit levels), those as int8 codes against the block's largest (``-128`` at it, fp16
    ``d``), then each value's level recomputed with the stored scale."""
    blocks = np.asarray(blocks, dtype=np.float32)
    n = blocks.shape[0]
    scales = make_qx_quants(_groups(blocks, 16), 32).reshape(n, 16)
    top = np.take_along_axis(scales, np.abs(scales).argmax(axis=-1)[:, None], axis=-1)
    empty = np.abs(top) < GROUP_MAX_EPS
    iscale = np.where(empty, 0, f32(-128) / np.where(empty, 1, top))
    d16 = np.where(empty, 0, 1 / np.where(empty, 1, iscale)).astype(np.float16)
    codes = np.clip(np.rint(iscale * scales), -128, 127).astype(np.int8)
    d = (d16.astype(np.float32) * codes)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 where d is: as llama.cpp leaves a zero sub-block
        levels = np.where(d != 0, np.clip(np.rint(blocks.reshape(n, 16, 16) / d), -32, 31) + 32, 0)
    levels = levels.astype(np.uint8).reshape(n, 2, 4, 32)  # two halves of 128: four rows of 32
    ql = ((levels[:, :, :2] & 0x0F) | ((levels[:, :, 2:] & 0x0F) << 4)).reshape(n, QK_K // 2)
    qh = ((levels >> 4) << np.array([0, 2, 4, 6], np.uint8)[:, None]).sum(axis=2, dtype=np.uint8)
    return np.concatenate([ql, qh.reshape(n, QK_K // 4), codes.view(np.uint8), d16.view(np.uint8)], axis=-1)


_QUANTIZERS = {"Q4_K": (quantize_q4_k_blocks, Q4_K_BYTES), "Q6_K": (quantize_q6_k_blocks, Q6_K_BYTES)}


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """``data`` as ``qtype`` (a ``gguf.GGMLQuantizationType``; Q4_K and Q6_K need rows a multiple of 256
    long): uint8 rows of the quantized bytes, as ``gguf.quants.quantize`` returns them (it quantizes the
    other types)."""
    import gguf

    if qtype.name not in _QUANTIZERS:
        return gguf.quants.quantize(data, qtype)
    blocks_of, size = _QUANTIZERS[qtype.name]
    if data.shape[-1] % QK_K:
        raise ValueError(f"{qtype.name} needs rows a multiple of {QK_K} long, not {data.shape[-1]}")
    blocks = np.asarray(data, dtype=np.float32).reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], size), np.uint8)
    for start in range(0, blocks.shape[0], _CHUNK):
        out[start : start + _CHUNK] = blocks_of(blocks[start : start + _CHUNK])
    return out.reshape(*data.shape[:-1], data.shape[-1] // QK_K * size)
