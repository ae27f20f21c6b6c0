"""Attention of a decode step: one new token for each of many sequences, over their KV caches.

``DecodeAttention`` runs one layer's RoPE, cache write and attention for the whole batch in a
single C call (``kernels/attention.c``) where the kernels are built, else in torch
(``DecodeAttention.torch``). Both compute every sequence independently of the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x [T, heads, D]`` (HF's convention), ``cos``/``sin`` [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class DecodeAttention:
    """One decode step's attention, layer after layer: ``self(layer, q, k, v)`` with the new tokens'
    un-rotated ``q [B, H*D]``, ``k`` and ``v [B, KV*D]`` writes their keys and values at each
    sequence's position and returns the attention output ``[B, H*D]``.

    ``k_cache``/``v_cache`` are [layers, slots, KV, capacity, D]; token ``b`` belongs to slot
    ``slots[b]`` and sits at position ``positions[b]`` (it attends to that many cached tokens and itself).
    With the C kernel (``lib``, float32 or float16 caches on CPU) the tokens may also be short
    prompts', each in one slot at consecutive positions; the torch path (``lib`` None) takes one
    token per slot.
    """

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: Sequence[int],
                 positions: Sequence[int], cos: torch.Tensor, sin: torch.Tensor, n_heads: int, lib):  # fmt: skip
        self.k_cache, self.v_cache, self.n_heads = k_cache, v_cache, n_heads
        self.n_kv, self.capacity, self.head_dim = k_cache.shape[2], k_cache.shape[3], k_cache.shape[4]
        self.slots = torch.tensor(slots, dtype=torch.long)
        self.positions = torch.tensor(positions, dtype=torch.long)
        self.cos, self.sin = cos.float().contiguous(), sin.float().contiguous()
        self.lib = lib  # the C kernels (``native.library()``), or None for torch
        if lib is not None:
            self.kernel = lib.tl_decode_attention_f16 if k_cache.dtype == torch.float16 else lib.tl_decode_attention
        self._layout: _TorchLayout | None = None  # for the torch path, made on its first layer

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.lib is None:
            return self.torch(layer, q, k, v)
        b, d = q.shape[0], self.head_dim
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        self.kernel(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), self.cos.data_ptr(), self.sin.data_ptr(),
            self.k_cache[layer].data_ptr(), self.v_cache[layer].data_ptr(), self.slots.data_ptr(),
            self.positions.data_ptr(), out.data_ptr(), b, self.n_heads, self.n_kv, d, self.capacity, d**-0.5,
        )  # fmt: skip
        return out

    def torch(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same in torch: a masked attention over the cache's view of the slot range the batch
        spans (a slot of the range that is not in the batch gets a zero query; its output is dropped)."""
        b, d, n_kv, group = q.shape[0], self.head_dim, self.n_kv, self.n_heads // self.n_kv
        if self._layout is None:
            self._layout = _TorchLayout.of(self.slots.to(q.device), self.positions.to(q.device), n_kv, self.capacity)
        at = self._layout
        q = rope(q.view(b, self.n_heads, d), self.cos, self.sin)
        k = rope(k.view(b, n_kv, d), self.cos, self.sin)
        self.k_cache[layer].view(-1, d).index_copy_(0, at.flat, k.reshape(-1, d))
        self.v_cache[layer].view(-1, d).index_copy_(0, at.flat, v.reshape(-1, d))
        keys = self.k_cache[layer, at.slots, :, : at.length]
        values = self.v_cache[layer, at.slots, :, : at.length]
        queries = q.view(b, n_kv, group, d)
        if b > 1:
            span = at.slots.stop - at.slots.start
            queries = q.new_zeros(span, n_kv, group, d).index_copy_(0, at.rows, queries)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=at.mask)
        return (out if b == 1 else out.index_select(0, at.rows)).reshape(b, -1)


@dataclass
class _TorchLayout:
    """What every layer's torch attention in a step shares."""

    flat: torch.Tensor  # where each new key/value goes in a layer's cache flattened to [-1, D]
    slots: slice  # the slot range the batch spans
    rows: torch.Tensor  # each token's place in that range
    length: int  # positions attended (the longest sequence's)
    mask: torch.Tensor | None  # [range, 1, 1, length]: each slot sees its own positions only

    @staticmethod
    def of(slots: torch.Tensor, positions: torch.Tensor, n_kv: int, capacity: int) -> _TorchLayout:
        heads = torch.arange(n_kv, device=slots.device)
        flat = ((slots[:, None] * n_kv + heads) * capacity + positions[:, None]).reshape(-1)
        lo, hi = int(slots.min()), int(slots.max()) + 1
        rows, length, mask = slots - lo, int(positions.max()) + 1, None
        if len(slots) > 1:  # an absent slot of the range sees position 0 (its output is dropped)
            seen = torch.zeros(hi - lo, dtype=torch.long, device=slots.device).index_copy_(0, rows, positions)
            mask = (torch.arange(length, device=slots.device)[None, :] <= seen[:, None])[:, None, None, :]
        return _TorchLayout(flat, slice(lo, hi), rows, length, mask)
