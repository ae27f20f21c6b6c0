"""Single-request generation: the decode loop with a KV cache, sampling, and streamed text.

The batched multi-adapter engine builds on the same sampling and detokenisation pieces.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class SamplingParams:
    """How to pick each next token."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: set[int] = field(default_factory=set)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from one row of logits."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def cache_kwarg(model) -> str:
    """Name of the forward() argument taking the KV cache (``cache`` since transformers 5.2x)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def generate_ids(model, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
    """Yield generated token ids one at a time until a stop token or the token limit."""
    device = next(model.parameters()).device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
    input_ids = torch.tensor([list(prompt_ids)], device=device)
    cache = {cache_kwarg(model): DynamicCache(config=model.config)}
    for _ in range(params.max_new_tokens):
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache)
        token = sample_next(out.logits[0, -1].cpu(), params, generator)
        if token in params.stop_token_ids:
            return
        yield token
        input_ids = torch.tensor([[token]], device=device)


class TextStream:
    """Turns generated token ids into text pieces, holding back incomplete UTF-8 characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        """Add a token; return the new text it completes (maybe empty)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece
