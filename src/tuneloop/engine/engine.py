"""The generation engine: continuous batching of many requests (and LoRA adapters) on one base model.

A background thread owns the model. Between decode steps it admits waiting requests (each gets a
KV-cache slot), then advances every active request by one token in a single batched forward pass;
finished or cancelled requests leave at once. Where the runner can (``ModelRunner.joins_prompts``),
the new requests' prompts ride in that same pass, up to ``codes_max_rows`` rows a step with the
decode rows first: the weights are read once for all of them, and a long prompt is computed a piece
a step while the others keep decoding (chunked prefill). Else each prompt gets a prefill pass of
its own. Greedy results do not depend on the batch: every row is computed as it would be alone.

Prefix caching: a slot keeps the tokens whose keys and values it holds after its request ends.
A new request takes the slot (or copies the prefix of the slot) that shares the longest prefix
with its prompt under the same adapter, and prefills only the rest: a system prompt or a block
of few-shot examples common to many requests is computed once, and a chat's next turn reuses
the previous one.

``Engine.request`` builds a request: it checks that the prompt fits the context, caps the answer at
the room left, builds the request's sampler (with its grammar constraint, ``engine/grammar.py``)
and detokenizer; ``Engine.submit`` queues requests, all or none (``Engine.generate`` does both).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import cached_property

from tuneloop.cpu import ThreadGovernor
from tuneloop.engine.grammar import GrammarConstraint, GrammarSpec, grammar_tokenizer
from tuneloop.engine.lora_weights import LoraAdapter
from tuneloop.engine.quantized import QuantizedWeight
from tuneloop.engine.runner import ModelRunner
from tuneloop.engine.sampling import Sampler, SamplingParams, TokenChoice
from tuneloop.errors import TuneloopError

log = logging.getLogger(__name__)

#: Decode steps of up to this many rows (one or two interactive streams) keep all threads beside a
#: training run of lower priority where that is faster; bigger batches leave it a core (``ThreadGovernor.share_above``).
INTERACTIVE_ROWS = 2


class QueueFullError(Exception):
    """Too many requests are waiting."""


class ContextLengthError(TuneloopError):
    """A prompt that leaves no room for an answer in the model's context."""

    def __init__(self, limit: int, prompt_tokens: int):
        self.limit, self.prompt_tokens = limit, prompt_tokens
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the messages."
        )


def token_budget(context_length: int, prompt_tokens: int, max_tokens: int | None) -> int:
    """The tokens a request may generate: ``max_tokens`` (None: all the room) capped at the room the
    prompt leaves in the context; raises ContextLengthError when it leaves none."""
    room = context_length - prompt_tokens
    if room <= 0:
        raise ContextLengthError(context_length, prompt_tokens)
    return min(max_tokens or room, room)


@dataclass
class TokenEvent:
    """Text produced by one step (possibly empty while a multi-byte character or stop string is pending)."""

    text: str
    choice: TokenChoice | None  # None for text flushed at the end (no new token)


@dataclass
class FinishEvent:
    """The request is done."""

    reason: str  # stop | length | cancelled | error
    completion_tokens: int
    error: str | None = None


Event = TokenEvent | FinishEvent


class Detokenizer:
    """Incremental detokenisation (holds back incomplete characters and possible stop strings)."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text = ""  # all text decoded so far
        self.sent = 0  # characters of ``text`` already emitted

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text safe to emit now, whether a stop string was reached)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                return self._emit(len(self.text)), True
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._emit(len(self.text) - hold), False

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        piece = self.text[self.sent : max(upto, self.sent)]
        self.sent = max(upto, self.sent)
        return piece


@dataclass
class Request:
    """One sequence to generate."""

    prompt_ids: list[int]
    params: SamplingParams
    sampler: Sampler
    detokenizer: Detokenizer
    on_event: Callable[[Event], None]
    adapter: LoraAdapter | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int = -1
    generated: int = 0
    last_token: int = -1
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class Engine:
    """Continuous-batching generation for one base model."""

    def __init__(
        self, model, tokenizer, *, max_batch: int = 16, max_len: int = 2048, max_queue: int = 64,
        packed: dict[str, QuantizedWeight] | None = None, adaptive_threads: bool = True,
    ):  # fmt: skip
        self.tokenizer = tokenizer
        #: Each step's thread count (all, or one while the cores are shared; ``tuneloop.cpu``).
        self.governor: ThreadGovernor
        self.context_length = max_len  # prompt and answer together (the KV cache's length)
        self.max_queue = max_queue
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []
        #: admitted requests (slot taken) whose prompts (the rest of them) wait for room in the next step
        self.pending: list[tuple[Request, list[int]]] = []
        self.free_slots = list(range(max_batch))  # least recently used first
        #: Per slot: the adapter name and the tokens whose keys/values the slot's cache holds.
        self.cached: list[tuple[str | None, list[int]]] = [(None, []) for _ in range(max_batch)]
        self.wakeup = threading.Condition()
        self.steps = 0  # decode steps run (for tests and metrics)
        self.decode_seconds = self.prefill_seconds = 0.0  # time spent in each (metrics)
        self.prompt_tokens = 0  # prompt tokens admitted
        self.cached_prompt_tokens = 0  # of those, served from the prefix cache
        self.closed = False
        # the runner (its KV cache) is made in the engine thread, which then runs every torch op of it
        self.runner: ModelRunner
        ready: Future[None] = Future()
        self.thread = threading.Thread(
            target=self._run,
            args=(model, max_batch, max_len, packed, adaptive_threads, ready),
            name="tuneloop-engine",
            daemon=True,
        )
        self.thread.start()
        ready.result()  # re-raises the runner's failure

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: LoraAdapter | None,
        on_event: Callable[[Event], None],
    ) -> Request:  # fmt: skip
        """Queue a sequence to generate after ``prompt_ids`` (:meth:`request`, then :meth:`submit`)."""
        request = self.request(prompt_ids, params, adapter, on_event)
        self.submit(request)
        return request

    def request(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: LoraAdapter | None,
        on_event: Callable[[Event], None],
    ) -> Request:  # fmt: skip
        """A sequence to generate after ``prompt_ids``, ready to :meth:`submit`; its events go to
        ``on_event`` (on the engine thread). ``params.max_tokens`` is capped at the room the prompt
        leaves in the context.

        Raises ContextLengthError when the prompt leaves no room, GrammarError when
        ``params.grammar`` cannot be used. Set the request's ``cancelled`` to stop it."""
        budget = token_budget(self.context_length, len(prompt_ids), params.max_tokens)
        if budget != params.max_tokens:
            params = replace(params, max_tokens=budget)
        constraint = GrammarConstraint(self.grammar_tokenizer, params.grammar) if params.grammar else None
        sampler = Sampler(params, self.eos_ids, constraint)
        return Request(list(prompt_ids), params, sampler, Detokenizer(self.tokenizer, params.stop), on_event, adapter)

    @cached_property
    def eos_ids(self) -> set[int]:
        """The tokens that end an answer: the tokenizer's end of sequence and the model's own."""
        ids = {self.tokenizer.eos_token_id}
        extra = getattr(self.runner.hf.generation_config, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra])
        return {i for i in ids if i is not None}

    @cached_property
    def grammar_tokenizer(self):
        """The vocabulary as the grammar engine sees it (built on first use, in about half a second:
        callers on an event loop call :meth:`check_grammar` in a worker thread first)."""
        vocab_size = max(len(self.tokenizer), self.runner.hf.config.get_text_config().vocab_size)
        return grammar_tokenizer(self.tokenizer, vocab_size, self.eos_ids)

    def check_grammar(self, spec: GrammarSpec) -> None:
        """Raise GrammarError when ``spec`` cannot constrain this model's tokens."""
        GrammarConstraint(self.grammar_tokenizer, spec)

    def submit(self, *requests: Request) -> None:
        """Queue requests, all or none: raises QueueFullError (queueing none) when they do not all
        fit in the queue."""
        with self.wakeup:
            if len(self.waiting) + len(requests) > self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are waiting; {len(requests)} more do not fit")
            self.waiting.extend(requests)
            self.wakeup.notify()

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.active) + len(self.pending)

    def close(self, cancel: bool = False) -> None:
        """Stop the engine thread once it is idle (a process must not exit while it runs torch ops).

        With ``cancel``, every waiting and running request ends first (finish reason ``cancelled``).
        """
        with self.wakeup:
            if cancel:
                for request in [*self.waiting, *self.active, *(r for r, _ in self.pending)]:
                    request.cancelled.set()
            self.closed = True
            self.wakeup.notify()
        self.thread.join()

    def _run(self, model, max_batch: int, max_len: int, packed, adaptive_threads: bool, ready: Future) -> None:
        """The engine thread. All of the model's torch work runs on it: with OpenMP (torch's CPU
        threads) a second thread that keeps its own team of worker threads would make both teams
        wait passively between parallel regions, about halving the speed of every decode step."""
        import torch

        try:
            self.runner = ModelRunner(model, max_batch, max_len, packed)
            self.governor = ThreadGovernor(torch.get_num_threads(), torch.set_num_threads, adaptive_threads,
                                           share_above=INTERACTIVE_ROWS)  # fmt: skip
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        self._loop()

    def _loop(self) -> None:
        while True:
            with self.wakeup:
                while not (self.waiting or self.active or self.pending or self.closed):
                    self.wakeup.wait()
                if self.closed and not (self.waiting or self.active or self.pending):
                    return
                admitted = [self.waiting.popleft() for _ in range(min(len(self.waiting), len(self.free_slots)))]
            joining = self._joining([*self.pending, *((r, None) for r in admitted)])
            self._drop_cancelled()
            try:
                if self.active or joining:
                    self.governor.start()
                    self.governor.stop(self._step(joining))
            except Exception as exc:  # never let one bad batch kill the engine
                log.exception("decode step failed")
                for request in [*self.active, *(r for r, _, _ in joining)]:
                    self._finish(request, "error", str(exc))

    def _joining(self, new: list[tuple[Request, list[int] | None]]) -> list[Joining]:
        """The new requests (tail None: not admitted yet) whose prompts ride in this step, each with
        the piece this step computes and the rest; a request that finds no room keeps its slot and
        goes first next step. Where the runner cannot join prompts, each gets a pass of its own now."""
        joining: list[Joining] = []
        rows, self.pending = len(self.active), []
        runner = self.runner
        for request, tail in new:
            try:
                if tail is None:
                    tail = self._admit(request)
                    if tail is None:
                        continue
                elif request.cancelled.is_set():
                    self._finish(request, "cancelled")
                    continue
                room = runner.codes_max_rows - rows  # rows a step computes from codes
                if not runner.joins_prompts:
                    self._prefill(request, tail)
                elif room > 0:
                    joining.append((request, tail[:room], tail[room:]))
                    rows += min(room, len(tail))
                else:
                    self.pending.append((request, tail))
            except Exception as exc:  # a request that fails alone fails alone
                log.exception("prefill failed")
                self._finish(request, "error", str(exc))
        return joining

    def _admit(self, request: Request) -> list[int] | None:
        """Give a new request its slot; return the prompt tokens left to compute (None: cancelled)."""
        if request.cancelled.is_set():
            self._finish(request, "cancelled")
            return None
        reused = request.cached_tokens = self._take_slot(request)
        self.cached[request.slot] = (_adapter_name(request.adapter), list(request.prompt_ids[:reused]))
        self.prompt_tokens += len(request.prompt_ids)
        self.cached_prompt_tokens += reused
        return request.prompt_ids[reused:]

    def _prefill(self, request: Request, tail: list[int]) -> None:
        """A pass of its own for a prompt, where the runner cannot join prompts to its steps."""
        started = time.perf_counter()
        logits = self.runner.prefill(request.slot, tail, request.adapter)
        self.prefill_seconds += time.perf_counter() - started
        self._started(request, logits)

    def _started(self, request: Request, logits, best: int | None = None) -> None:
        """A request whose whole prompt is computed: it decodes from here on."""
        self.cached[request.slot][1][:] = request.prompt_ids
        self.active.append(request)
        self._sample(request, logits, best)

    def _take_slot(self, request: Request) -> int:
        """Give the request a free slot, reusing the longest cached prefix of its prompt; return its length."""
        name, prompt = _adapter_name(request.adapter), request.prompt_ids
        best, best_len = -1, 0
        for slot, (cached_name, tokens) in enumerate(self.cached):
            if cached_name == name:
                length = len(os.path.commonprefix([tokens, prompt]))
                if length > best_len or (length == best_len and slot in self.free_slots):
                    best, best_len = slot, length
        reuse = max(0, min(best_len, len(prompt) - 1))  # prefill at least one token: its logits start the answer
        with self.wakeup:
            # take the matching slot itself only if its whole content is a prefix of the prompt (or it
            # is the least recently used anyway): nothing cached is lost; else copy into the LRU slot
            in_place = best in self.free_slots and reuse > 0 and best_len == len(self.cached[best][1])
            slot = best if in_place else self.free_slots[0]
            self.free_slots.remove(slot)
        request.slot = slot  # from here on, _finish returns the slot whatever happens
        self.runner.start(slot, cached=reuse, source=best)
        return reuse

    def _step(self, joining: list[Joining]) -> int:
        """One forward pass: a token for every active request, and a piece of each joining prompt;
        return the rows (tokens) it computed."""
        batch = list(self.active)
        requests = [*batch, *(r for r, _, _ in joining)]
        tokens = [[r.last_token] for r in batch] + [piece for _, piece, _ in joining]
        started = time.perf_counter()
        logits = self.runner.step([r.slot for r in requests], tokens, [r.adapter for r in requests])
        elapsed = time.perf_counter() - started
        prompt_share = sum(len(piece) for _, piece, _ in joining) / sum(map(len, tokens))
        self.prefill_seconds += elapsed * prompt_share
        self.decode_seconds += elapsed * (1 - prompt_share)
        self.steps += bool(batch)
        best = logits.argmax(dim=-1).tolist()  # every row's greedy token in one call
        for request, row, top in zip(batch, logits[: len(batch)], best[: len(batch)], strict=True):
            self.cached[request.slot][1].append(request.last_token)  # its keys/values were written by this step
            self._sample(request, row, top)
        unfinished = []  # prompts with more to compute: first in the next step
        for (request, piece, rest), row, top in zip(joining, logits[len(batch) :], best[len(batch) :], strict=True):
            if rest:
                self.cached[request.slot][1].extend(piece)
                unfinished.append((request, rest))
            else:
                self._started(request, row, top)
        self.pending[:0] = unfinished
        return len(batch) + sum(len(piece) for _, piece, _ in joining)

    def _sample(self, request: Request, logits, best: int | None) -> None:
        """Choose a request's next token; a request whose sampling fails ends alone (its neighbours
        in the step go on)."""
        try:
            choice = request.sampler.choose(logits, best)
        except Exception as exc:
            log.exception("sampling failed")
            return self._finish(request, "error", f"sampling failed: {type(exc).__name__}: {exc}")
        self._accept(request, choice)

    def _accept(self, request: Request, choice: TokenChoice) -> None:
        if choice.token in request.sampler.eos_ids:
            return self._finish(request, "stop")
        request.generated += 1
        request.last_token = choice.token
        text, stopped = request.detokenizer.push(choice.token)
        request.on_event(TokenEvent(text, choice))
        if stopped:
            self._finish(request, "stop")
        elif request.generated >= request.params.max_tokens:
            self._finish(request, "length")

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.active if r.cancelled.is_set()]:
            self._finish(request, "cancelled")

    def _finish(self, request: Request, reason: str, error: str | None = None) -> None:
        if request in self.active:
            self.active.remove(request)
        if request.slot >= 0:  # the slot's cache stays, for prefix reuse
            if reason == "error":  # the cache may be half-written
                self.cached[request.slot] = (None, [])
            with self.wakeup:
                self.free_slots.append(request.slot)
            request.slot = -1
        tail = request.detokenizer.flush() if reason in ("stop", "length") else ""
        if tail:
            request.on_event(TokenEvent(tail, None))
        request.on_event(FinishEvent(reason, request.generated, error))


#: a request joining a step: the piece of its prompt this step computes, and the rest
Joining = tuple[Request, list[int], list[int]]


def _adapter_name(adapter: LoraAdapter | None) -> str | None:
    return None if adapter is None else adapter.name
