"""A Llama-family causal LM run on a ``PackedBatch``: the shared prefix once, then every example.

The decoder layers' own modules (norms, projections, MLP, rotary embedding) do the work, so LoRA
adapters injected by ``peft`` apply as usual; only the attention pattern differs from the stock
forward: the prefix attends causally to itself, and each example attends to the whole prefix and
causally to its own tokens. Supported: Llama, Mistral, Qwen2 (the catalog's architectures);
sliding-window attention is not implemented, so longer sequences than the window are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tuneloop.errors import TuneloopError
from tuneloop.train.batching import PackedBatch
from tuneloop.train.loss import exact_answers, label_loss, sequence_logprobs


class LossSums(NamedTuple):
    """Sums over a micro-batch (to be normalised by the whole step's ``labels``). Supervised: over its label
    positions; DPO (``train.dpo.DPOLoss``): over its pairs."""

    loss: torch.Tensor  # summed cross-entropy, or summed DPO loss (differentiable)
    correct: torch.Tensor  # labels predicted exactly (argmax); DPO: pairs ranked right (ties count half)
    labels: int  # label positions scored; DPO: pairs
    exact: torch.Tensor  # examples whose every label is predicted exactly; DPO: as ``correct``
    examples: int  # examples (pairs) scored
    margin: torch.Tensor | float = 0.0  # DPO: summed reward margins


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, scale: float) -> torch.Tensor:
    """Attention of the packed sequence; q (L, Hq, D), k and v (L, Hkv, D) -> (L, Hq * D)."""
    p, n, s = batch.prefix_length, batch.n_examples, batch.longest_suffix
    heads = q.shape[1] // k.shape[1]
    out = []
    if p:
        qp, kp, vp = (t[:p].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=heads > 1))
        out[-1] = out[-1][0].transpose(0, 1).reshape(p, -1)

    def grid(t: torch.Tensor) -> torch.Tensor:  # packed suffix tokens -> (n, s, H, D), zeros where padded
        g = t.new_zeros(n * s, *t.shape[1:]).index_copy(0, batch.suffix_slots, t[p:])
        return g.view(n, s, *t.shape[1:])

    qs = grid(q).transpose(1, 2)
    ks, vs = (grid(t) for t in (k, v))
    if p:
        ks = torch.cat((k[:p].unsqueeze(0).expand(n, -1, -1, -1), ks), dim=1)
        vs = torch.cat((v[:p].unsqueeze(0).expand(n, -1, -1, -1), vs), dim=1)
    o = F.scaled_dot_product_attention(
        qs, ks.transpose(1, 2), vs.transpose(1, 2), attn_mask=batch.suffix_attention, scale=scale, enable_gqa=heads > 1
    )
    out.append(o.transpose(1, 2).reshape(n * s, -1).index_select(0, batch.suffix_slots))
    return torch.cat(out) if len(out) > 1 else out[0]


def _decoder_layer(layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: PackedBatch):
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(x.shape[0], -1, attn.head_dim)
    k = attn.k_proj(x).view(x.shape[0], -1, attn.head_dim)
    v = attn.v_proj(x).view(x.shape[0], -1, attn.head_dim)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    h = h + attn.o_proj(_attention(q, k, v, batch, attn.scaling))
    return h + layer.mlp(layer.post_attention_layernorm(h))


class PackedCausalLM(nn.Module):
    """Wraps a (possibly PEFT) causal LM so ``forward(batch)`` returns the loss sums of a packed micro-batch."""

    def __init__(self, model: nn.Module, between_layers: Callable[[], None] | None = None):
        """``between_layers`` is called as each decoder layer's forward and backward start (the thread
        governor's mid-step check: a long micro-batch may change its thread count between layers)."""
        super().__init__()
        self.model = model
        self._between = between_layers
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._decoder = base.model
        self._lm_head = base.lm_head
        config = base.config
        use_window = getattr(config, "use_sliding_window", True)  # Qwen2 has the field, Mistral does not
        self._window = getattr(config, "sliding_window", None) if use_window else None

    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """Final (normalised) hidden states at the label positions, (N, hidden)."""
        decoder = self._decoder
        if self._window and batch.prefix_length + batch.longest_suffix > self._window:
            raise TuneloopError(f"examples longer than the model's sliding window ({self._window}): lower max_length")
        h = decoder.embed_tokens(batch.input_ids)
        cos, sin = decoder.rotary_emb(h.unsqueeze(0), batch.position_ids.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # (L, 1, D): broadcast over heads
        between = self._between
        for layer in decoder.layers:
            if between is not None:
                between()
            h = _decoder_layer(layer, h, cos, sin, batch)
            if between is not None and h.requires_grad:
                h.register_hook(lambda grad: between())  # as the gradient reaches this layer's output
        return decoder.norm(h.index_select(0, batch.label_index))

    def sequence_logprobs(self, batch: PackedBatch, n_sequences: int) -> torch.Tensor:
        """Summed log-probability of each sequence's trained tokens, (n_sequences,) float32 (``label_example``
        numbers the sequences: examples, or two per DPO pair)."""
        hidden = self.hidden_states(batch)
        return sequence_logprobs(hidden, self._lm_head, batch.targets, batch.label_example, n_sequences)

    def forward(self, batch: PackedBatch) -> LossSums:
        """Summed cross-entropy, correct predictions and exactly answered examples of the batch."""
        loss, hits = label_loss(self.hidden_states(batch), self._lm_head, batch.targets)
        exact = exact_answers(hits, batch.label_example, batch.n_examples)
        return LossSums(loss, hits.sum(), int(batch.targets.numel()), exact, batch.n_examples)
