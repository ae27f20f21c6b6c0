"""The model runner: a Llama-family forward pass over many sequences and many LoRA adapters at once.

Every request owns a slot of a preallocated KV cache. ``prefill`` runs one request's prompt;
``step`` advances any set of slots by one token (or a piece of a prompt) in a single batched
forward pass, whatever adapter each slot uses: the base weights are read once per step for the whole batch, and each
adapter's low-rank update is applied only to its own rows. Works for Llama, SmolLM2, Qwen2 and
Mistral (HF module weights are used as they are; nothing is copied). Layers given 8- or 4-bit
codes (``packed``, see ``packed_weights``) run steps of up to ``quantized.max_rows()`` rows from
the codes (as many as the kernel beats float32 for); the codes multiply float32 activations, or
activations rounded to int8 (``Int8ActivationCodes``). Where every projection has codes, a step
mixes decode tokens and pieces of prompts, and a long prompt runs as several such steps; else
longer prefills run from the float32 weights.
On CPU the small operations of a layer run as C kernels (``native``): decode attention, LoRA
updates, residual add + RMSNorm, SiLU gating; torch does them where the kernels are not built.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tuneloop.engine import memory, native
from tuneloop.engine.attention import DecodeAttention, rope
from tuneloop.engine.lora_weights import (
    LoraAdapter,
    LoraGroups,
    LoraRows,
    LoraStack,
    StackedLora,
    StackRows,
    stack_adapters,
)
from tuneloop.engine.quantized import Int8ActivationCodes, QuantizedWeight, max_rows

#: Stacks of adapters kept for batches that mix several, in torch (each holds a copy of its adapters' factors).
MAX_STACKS = 2

#: Where the runner does not join prompts (float32 weights), prompts up to this many tokens attend
#: through the C kernel (one call per layer), longer ones through torch's scaled-dot-product attention.
SHORT_PREFILL = 64

LoraPlan = LoraRows | LoraGroups | StackedLora


class ModelRunner:
    """Owns the KV cache of ``n_slots`` sequences for one base model."""

    def __init__(self, model, n_slots: int, max_len: int, packed: dict[str, QuantizedWeight] | None = None):
        self.hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        #: quantized codes by module (id), for the layers that have them
        self.packed = {id(self.hf.get_submodule(name)): codes for name, codes in (packed or {}).items()}
        self.codes_max_rows = max_rows() if self.packed else 0
        linears = [self.hf.lm_head, *(m for layer in self.hf.model.layers for m in _projections(layer))]
        self._all_packed = all(id(m) in self.packed for m in linears)  # every projection from codes
        #: whether the quantized layers round their inputs to int8 (``Int8ActivationCodes``)
        self.int8_activations = any(isinstance(c, Int8ActivationCodes) for c in self.packed.values())
        self.core = self.hf.model
        cfg = self.hf.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = list(self.core.layers)
        self.device = next(self.hf.parameters()).device
        self.dtype = next(self.hf.parameters()).dtype
        self.max_len, self.n_slots = max_len, n_slots
        self.capacity = min(256, max_len)
        on_cpu = self.device.type == "cpu" and self.dtype == torch.float32
        #: the C kernels for attention, LoRA, norms and gating (None: torch does them)
        self._kernels = native.library() if on_cpu else None
        #: keys, values and adapter factors kept in float16, where the kernels round activations to int8
        #: anyway: half the bytes (``load_lora(..., half=)`` for the adapters of this runner)
        self.float16_state = self.int8_activations and self._kernels is not None
        cache_dtype = torch.float16 if self.float16_state else self.dtype
        shape = (len(self.layers), n_slots, self.n_kv, self.capacity, self.head_dim)
        self.k_cache = torch.zeros(shape, device=self.device, dtype=cache_dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=cache_dtype)
        self.lengths = [0] * n_slots
        self._stacks: collections.OrderedDict[tuple[int, ...], LoraStack] = collections.OrderedDict()
        self._silu = self._kernels is not None and getattr(cfg, "hidden_act", None) in ("silu", "swish")
        norms = [
            self.core.norm,
            *(m for layer in self.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)),
        ]
        #: the norms the kernel computes (Llama's RMSNorm in float32), by module id
        self._fused_norms = {id(m) for m in norms if _is_rms_norm(m)} if self._kernels is not None else set()
        #: bytes of float32 weights handed back to the OS: where every projection runs from codes no
        #: step reads them (a tied head's weight is the embeddings', which stay)
        self.paged_out_bytes = 0
        if self.joins_prompts:
            tied = self.core.embed_tokens.weight.data_ptr()
            unused = [m.weight for m in linears if m.weight.data_ptr() != tied]
            self.paged_out_bytes = memory.page_out(unused)

    # -- cache -----------------------------------------------------------------------------------
    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new = min(self.max_len, max(needed, 2 * self.capacity))
        pad = (0, 0, 0, new - self.capacity)
        self.k_cache = F.pad(self.k_cache, pad)
        self.v_cache = F.pad(self.v_cache, pad)
        self.capacity = new

    @torch.inference_mode()
    def start(self, slot: int, cached: int = 0, source: int | None = None) -> None:
        """Begin a new sequence in ``slot`` whose first ``cached`` positions are already computed in
        ``source``'s cache (copied over when that is another slot); prefill then runs the rest."""
        if cached and source is not None and source != slot:
            self.k_cache[:, slot, :, :cached] = self.k_cache[:, source, :, :cached]
            self.v_cache[:, slot, :, :cached] = self.v_cache[:, source, :, :cached]
        self.lengths[slot] = cached

    # -- linear layers with per-row adapters -----------------------------------------------------
    def _linear(self, module, x: torch.Tensor, layer: int, name: str, lora: LoraPlan | None) -> torch.Tensor:
        """``x @ W.T + b`` plus each row's adapter update (``lora``: how the rows meet their adapters)."""
        y = self._project(module, x)
        if lora is not None:
            lora.add(y, x, layer, name)
        return y

    # -- forward ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: Sequence[int], adapter: LoraAdapter | None) -> torch.Tensor:
        """Run a prompt (or its uncached tail) of any length for one slot; return the last position's
        logits. Where ``joins_prompts``, in steps of up to ``codes_max_rows`` tokens, each computed as
        in any step: a prompt's result does not depend on how it is split (cache, chunks, batches)."""
        if not token_ids:
            raise ValueError("a prefill needs at least one token")
        if not self.joins_prompts:
            return self.step([slot], [token_ids], [adapter])[0]
        for start in range(0, len(token_ids), self.codes_max_rows):
            logits = self.step([slot], [token_ids[start : start + self.codes_max_rows]], [adapter])
        return logits[0]

    @property
    def joins_prompts(self) -> bool:
        """Whether ``step`` takes pieces of prompts beside decode rows (up to ``codes_max_rows`` rows
        in all): with the C kernels and every projection decoded from codes, whose kernels compute
        a row alike in any batch (MKL's float32 products and torch's attention may not)."""
        return self._kernels is not None and self._all_packed

    @torch.inference_mode()
    def step(
        self, slots: Sequence[int], token_ids: Sequence[Sequence[int]], adapters: Sequence[LoraAdapter | None]
    ) -> torch.Tensor:
        """Advance each slot by its new tokens in one forward pass: one token for a sequence being
        decoded, or the next piece of a prompt; return each slot's last-token logits [len(slots), vocab].
        Where ``joins_prompts``, any mix of both, up to ``codes_max_rows`` tokens in all; else one
        token per sequence, or a lone prompt of any length.

        Every token's row is computed as it would be alone, so joining prompts to a decode step
        changes no result, and saves a pass over the weights for each prompt."""
        sizes = [len(ids) for ids in token_ids]
        if min(sizes) < 1:
            raise ValueError("every sequence in a step needs at least one token")
        if self.joins_prompts and sum(sizes) > self.codes_max_rows:
            raise ValueError(f"a step takes up to {self.codes_max_rows} tokens, got {sum(sizes)}")
        if not self.joins_prompts and len(sizes) > 1 and max(sizes) > 1:
            raise ValueError("a step takes one token per sequence, or one prompt alone (no codes to join prompts)")
        # rows sorted by adapter, so that every adapter's rows are one contiguous slice
        order = sorted(range(len(slots)), key=lambda i: "" if adapters[i] is None else adapters[i].name)
        tokens, row_slots, positions, row_adapters, last = [], [], [], [], []
        for i in order:
            ids, start = token_ids[i], self.lengths[slots[i]]
            tokens += ids
            row_slots += [slots[i]] * len(ids)
            positions += range(start, start + len(ids))
            row_adapters += [adapters[i]] * len(ids)
            last.append(len(tokens) - 1)
        self._ensure_capacity(max(positions) + 1)
        hidden = self._forward(torch.tensor(tokens, device=self.device), row_slots, positions,
                               self._lora_plan(row_adapters))  # fmt: skip
        for slot, ids in zip(slots, token_ids, strict=True):
            self.lengths[slot] += len(ids)
        if len(last) < len(tokens):
            hidden = hidden.index_select(0, torch.tensor(last, device=self.device))
        inverse = torch.tensor(order).argsort()  # back in the caller's order
        return self._logits(hidden).index_select(0, inverse.to(self.device))

    def _lora_plan(self, adapters: Sequence[LoraAdapter | None]) -> LoraPlan | None:
        """How the rows of a batch sorted by adapter meet their adapters (None: no adapter)."""
        groups = _adapter_groups(adapters)
        if not groups:
            return None
        if self._kernels is not None:  # the C kernel: one call per projection for every group
            spans = [slice(0, len(adapters)) if rows is None else rows for _, rows in groups]
            starts = [spans[0].start, *(r.stop for r in spans)]
            return LoraRows(self._kernels, [adapter for adapter, _ in groups], starts)
        if len(groups) < 2:
            return LoraGroups(groups)
        key = tuple(id(adapter) for adapter, _ in groups)
        stack = self._stacks.get(key)
        if stack is None:
            stack = self._stacks[key] = stack_adapters(tuple(adapter for adapter, _ in groups))
            while len(self._stacks) > MAX_STACKS:
                self._stacks.popitem(last=False)
        self._stacks.move_to_end(key)
        return StackedLora(stack, StackRows.of([rows for _, rows in groups]))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._project(self.hf.lm_head, self._add_norm(hidden, None, self.core.norm)).float()

    def _project(self, module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` without LoRA: from the quantized codes for few rows when the layer has them."""
        codes = self.packed.get(id(module))
        if codes is None or x.shape[0] > self.codes_max_rows:
            return _dense(x, module.weight, module.bias)
        y = codes.matmul(x)
        return y if module.bias is None else y + module.bias

    def _forward(self, tokens, slots: list[int], positions: list[int], lora: LoraPlan | None) -> torch.Tensor:
        """Hidden states [T, H] of T new tokens, token i in slot ``slots[i]`` at ``positions[i]``:
        one token for each of many slots (decode), a prompt's tokens in one slot, or both."""
        x = self.core.embed_tokens(tokens)
        position_ids = torch.tensor(positions, device=self.device)
        cos, sin = self.core.rotary_emb(x[None], position_ids[None])
        cos, sin = cos[0], sin[0]  # [T, head_dim]
        n, one_prompt = x.shape[0], len(slots) > 1 and len(set(slots)) == 1
        if one_prompt and not self.joins_prompts and (n > SHORT_PREFILL or self._kernels is None):
            attention = self._prefill_attention(slots[0], positions[0], n, cos, sin)  # torch's, for a prompt
        else:  # token i sees its slot's cache up to its own position (C kernel, or torch for decode)
            attention = DecodeAttention(self.k_cache, self.v_cache, slots, positions, cos, sin, self.n_heads,
                                        self._kernels)  # fmt: skip
        delta = None  # the last sublayer's output, added to x by the next norm
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = self._add_norm(x, delta, layer.input_layernorm)
            q = self._linear(attn.q_proj, h, li, "q_proj", lora)
            k = self._linear(attn.k_proj, h, li, "k_proj", lora)
            v = self._linear(attn.v_proj, h, li, "v_proj", lora)
            delta = self._linear(attn.o_proj, attention(li, q, k, v), li, "o_proj", lora)
            h = self._add_norm(x, delta, layer.post_attention_layernorm)
            mlp = layer.mlp
            gate = self._linear(mlp.gate_proj, h, li, "gate_proj", lora)
            up = self._linear(mlp.up_proj, h, li, "up_proj", lora)
            delta = self._linear(mlp.down_proj, self._gated(mlp, gate, up), li, "down_proj", lora)
        return x.add_(delta) if delta is not None else x

    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, norm) -> torch.Tensor:
        """``x += delta`` in place (the residual connection), then ``norm(x)``."""
        if id(norm) not in self._fused_norms or not x.is_contiguous():
            if delta is not None:
                x.add_(delta)
            return norm(x)
        out = torch.empty_like(x)
        delta = None if delta is None else delta.contiguous()
        self._kernels.tl_add_rmsnorm(x.data_ptr(), None if delta is None else delta.data_ptr(), norm.weight.data_ptr(),
                           norm.variance_epsilon, out.data_ptr(), x.shape[0], x.shape[1])  # fmt: skip
        return out

    def _gated(self, mlp, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``act_fn(gate) * up``, in one C call for SiLU."""
        if not self._silu:
            return mlp.act_fn(gate) * up
        out = torch.empty_like(gate)
        gate, up = gate.contiguous(), up.contiguous()
        self._kernels.tl_silu_mul(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.shape[0], gate.shape[1])
        return out

    def _prefill_attention(self, slot: int, s0: int, n: int, cos: torch.Tensor, sin: torch.Tensor):
        """Attention for ``n`` new tokens of one slot: over its cache, and causally over each other."""
        mask = None if n == 1 else _causal_mask(n, s0, self.device)

        def attend(li: int, q, k, v):
            q = rope(q.view(n, self.n_heads, self.head_dim), cos, sin)
            k = rope(k.view(n, self.n_kv, self.head_dim), cos, sin)
            self.k_cache[li, slot, :, s0 : s0 + n] = k.transpose(0, 1)
            self.v_cache[li, slot, :, s0 : s0 + n] = v.view(n, self.n_kv, self.head_dim).transpose(0, 1)
            keys, values = self.k_cache[li, slot, :, : s0 + n], self.v_cache[li, slot, :, : s0 + n]
            keys, values = keys.to(q.dtype), values.to(q.dtype)  # a float16 cache: its values, in float32
            return (
                F.scaled_dot_product_attention(
                    q.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask, enable_gqa=True
                )[0]
                .transpose(0, 1)
                .reshape(n, -1)
            )

        return attend


def _projections(layer) -> list:
    """A decoder layer's seven linear projections."""
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


def _dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; for up to 128 rows computed as ``(weight @ x.T).T``.

    Same product, other GEMM layout: on CPU (MKL) with few rows of ``x`` (decode steps, short
    prompts) it runs ~20% faster for the transformer's projections and 2.3x faster for the
    49,152-wide vocabulary projection, which ``F.linear``'s layout runs on a single thread. A
    single row is computed as two (MKL's matrix-vector product is about half as fast as its
    two-column product).
    """
    if x.shape[0] > 128 or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    single = x.shape[0] == 1
    y = (weight @ (torch.cat([x, x]) if single else x).T).T
    y = y[:1].contiguous() if single else y.contiguous()
    return y if bias is None else y + bias


def _is_rms_norm(module) -> bool:
    """Whether ``module`` computes Llama's RMSNorm, ``weight * x / sqrt(mean(x^2) + eps)`` in float32."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and hasattr(module, "variance_epsilon")
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and weight.is_contiguous()
    )


def _causal_mask(n: int, past: int, device) -> torch.Tensor:
    """[n, past + n] boolean mask: new token i sees the cache and new tokens 0..i."""
    return torch.ones(n, past + n, dtype=torch.bool, device=device).tril(diagonal=past)


def _adapter_groups(adapters: Sequence[LoraAdapter | None]) -> list[tuple[LoraAdapter, slice | None]]:
    """(adapter, row slice) for each run of one adapter in a batch sorted by adapter (None: every row)."""
    groups, start = [], 0
    for end in range(1, len(adapters) + 1):
        if end == len(adapters) or adapters[end] is not adapters[start]:
            if adapters[start] is not None:
                whole = start == 0 and end == len(adapters)
                groups.append((adapters[start], None if whole else slice(start, end)))
            start = end
    return groups
