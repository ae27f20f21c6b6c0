"""Attention of a decode step: one new token for each of many sequences, over their KV caches.

``decode_attention`` runs one layer's RoPE, cache write and attention for the whole batch in a
single C call (``kernels/attention.c``) where the kernels are built, else in torch
(``decode_attention_torch``). Both compute every sequence independently of the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tuneloop.serve import native


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
    """

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: Sequence[int],
                 positions: Sequence[int], cos: torch.Tensor, sin: torch.Tensor, n_heads: int):  # fmt: skip
        self.k_cache, self.v_cache, self.n_heads = k_cache, v_cache, n_heads
        self.n_kv, self.capacity, self.head_dim = k_cache.shape[2], k_cache.shape[3], k_cache.shape[4]
        self.slots = torch.tensor(slots, dtype=torch.long)
        self.positions = torch.tensor(positions, dtype=torch.long)
        self.cos, self.sin = cos.float().contiguous(), sin.float().contiguous()
        self.lib = native.library() if k_cache.device.type == "cpu" and k_cache.dtype == torch.float32 else None

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.lib is None:
            return self.torch(layer, q, k, v)
        b, d = q.shape[0], self.head_dim
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        self.lib.tl_decode_attention(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), self.cos.data_ptr(), self.sin.data_ptr(),
            self.k_cache[layer].data_ptr(), self.v_cache[layer].data_ptr(), self.slots.data_ptr(),
            self.positions.data_ptr(), out.data_ptr(), b, self.n_heads, self.n_kv, d, self.capacity, d**-0.5,
        )  # fmt: skip
        return out

    def torch(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same in torch: a masked attention over the cache's view of the slot range the batch
        spans (a slot of the range that is not in the batch gets a zero query; its output is dropped)."""
        b, d, n_kv, group = q.shape[0], self.head_dim, self.n_kv, self.n_heads // self.n_kv
        if not hasattr(self, "_flat"):
            self._prepare_torch(q.device)
        q = rope(q.view(b, self.n_heads, d), self.cos, self.sin)
        k = rope(k.view(b, n_kv, d), self.cos, self.sin)
        self.k_cache[layer].view(-1, d).index_copy_(0, self._flat, k.reshape(-1, d))
        self.v_cache[layer].view(-1, d).index_copy_(0, self._flat, v.reshape(-1, d))
        keys, values = (
            self.k_cache[layer, self._range, :, : self._length],
            self.v_cache[layer, self._range, :, : self._length],
        )
        queries = q.view(b, n_kv, group, d)
        if b > 1:
            queries = q.new_zeros(self._range.stop - self._range.start, n_kv, group, d).index_copy_(
                0, self._rows, queries
            )
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=self._mask)
        return (out if b == 1 else out.index_select(0, self._rows)).reshape(b, -1)

    def _prepare_torch(self, device: torch.device) -> None:
        """What every layer's torch attention shares: where the new keys go, the range, the mask."""
        slots, pos = self.slots.to(device), self.positions.to(device)
        heads = torch.arange(self.n_kv, device=device)
        self._flat = ((slots[:, None] * self.n_kv + heads) * self.capacity + pos[:, None]).reshape(-1)
        lo, hi = int(slots.min()), int(slots.max()) + 1
        self._range, self._length, self._rows = slice(lo, hi), int(pos.max()) + 1, slots - lo
        self._mask = None
        if len(slots) > 1:  # each slot sees its own positions only (an absent slot: position 0)
            seen = torch.zeros(hi - lo, dtype=torch.long, device=device).index_copy_(0, self._rows, pos)
            self._mask = (torch.arange(self._length, device=device)[None, :] <= seen[:, None])[:, None, None, :]
