"""Choosing each next token: penalties, temperature, top-p, seeds, log-probabilities, grammar constraints."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tuneloop.engine.grammar import GrammarConstraint, GrammarSpec


@dataclass
class SamplingParams:
    """Per-request decoding settings (OpenAI's names)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    #: the grammar the output must match (JSON mode, a JSON schema, tool calls); None: free text
    grammar: GrammarSpec | None = None


@dataclass
class TokenChoice:
    """A sampled token, with its log-probability and the top alternatives when asked for."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


class Sampler:
    """The sampling state of one sequence (its RNG, token counts and grammar state)."""

    def __init__(self, params: SamplingParams, eos_ids: set[int], constraint: GrammarConstraint | None = None):
        self.params = params
        self.eos_ids = eos_ids
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.counts: dict[int, int] = {}
        self.constraint = constraint

    def choose(self, logits: torch.Tensor, best: int | None = None) -> TokenChoice:
        """Pick the next token from one row of logits (float32, on CPU); ``best`` is the row's argmax
        where the caller took it for a whole batch at once (used when nothing changes the logits)."""
        p = self.params
        penalized = bool(self.counts and (p.frequency_penalty or p.presence_penalty))
        if penalized:
            ids = torch.tensor(list(self.counts))
            counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype)
            logits = logits.clone()
            logits[ids] -= counts * p.frequency_penalty + p.presence_penalty
        logprobs = torch.log_softmax(logits, dim=-1) if p.logprobs else None
        constraint = self.constraint
        if constraint is not None and not constraint.compute():  # nothing may follow: end here
            return TokenChoice(min(self.eos_ids, default=0))
        if p.temperature <= 0:
            if best is not None and not penalized and (constraint is None or constraint.allows(best)):
                token = best
            else:
                token = int(torch.argmax(logits if constraint is None else constraint.restrict(logits)))
        else:
            if constraint is not None:
                logits = constraint.restrict(logits)
            probs = torch.softmax(logits / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < p.top_p
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs * keep)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self.counts[token] = self.counts.get(token, 0) + 1
        if constraint is not None:
            constraint.advance(token)
        if logprobs is None:
            return TokenChoice(token)
        top = None
        if p.top_logprobs:
            values, ids = torch.topk(logprobs, p.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenChoice(token, float(logprobs[token]), top)
