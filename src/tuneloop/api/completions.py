"""``/v1/completions``: prompt → text, for completion-style use (no chat template)."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.api import generation
from tuneloop.api.errors import APIError
from tuneloop.api.generation import TokenEvent
from tuneloop.api.state import AppState, get_state
from tuneloop.engine.sampling import SamplingParams
from tuneloop.store.ids import random_id

router = APIRouter()
State = Annotated[AppState, Depends(get_state)]


class CompletionRequest(BaseModel):
    """The supported part of the legacy Completions request."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    stream: bool = False
    user: str | None = None


@router.post("/completions")
async def completions(state: State, body: CompletionRequest, http: Request):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or any(not p for p in prompts):
        raise APIError(400, "'prompt' must be a non-empty string or list of strings.", param="prompt")
    if body.stream and len(prompts) > 1:
        raise APIError(400, "Streaming supports a single prompt.", param="prompt")
    target = await run_in_threadpool(generation.resolve_target, state.pool, body.model)
    tokenizer = target.engine.tokenizer
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    meta = {"id": random_id("cmpl-"), "created": int(time.time()), "model": body.model}
    streams, prompt_tokens = [], 0
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        prompt_tokens += len(ids)
        budget = generation.check_context(target, ids, body.max_tokens)
        params = SamplingParams(
            max_tokens=budget, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop,
            frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
            logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
        )  # fmt: skip
        streams.append(generation.start(target, ids, params, body.n))
    if body.stream:
        return StreamingResponse(_sse(streams[0], meta, http), media_type="text/event-stream")
    choices, completion_tokens = [], 0
    for p_index, stream in enumerate(streams):
        texts, finish = [""] * body.n, [None] * body.n
        lp = [{"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for _ in range(body.n)]
        async for index, event in generation.events(stream, http):
            if isinstance(event, TokenEvent):
                if event.choice is not None and event.choice.logprob is not None:
                    entry = lp[index]
                    entry["tokens"].append(tokenizer.decode([event.choice.token]))
                    entry["token_logprobs"].append(event.choice.logprob)
                    entry["top_logprobs"].append({tokenizer.decode([t]): v for t, v in event.choice.top or []})
                    entry["text_offset"].append(len(texts[index]))
                texts[index] += event.text
            else:
                if event.reason == "error":
                    raise APIError(500, f"Generation failed: {event.error}")
                finish[index] = event.reason
                completion_tokens += event.completion_tokens
        for i in range(body.n):
            choices.append({"index": p_index * body.n + i, "text": texts[i], "finish_reason": finish[i],
                            "logprobs": lp[i] if body.logprobs is not None else None})  # fmt: skip
    return {
        **meta,
        "object": "text_completion",
        "choices": choices,
        "usage": generation.usage(prompt_tokens, completion_tokens),
    }


async def _sse(stream, meta: dict, http: Request):
    async for index, event in generation.events(stream, http):
        if isinstance(event, TokenEvent):
            if not event.text:
                continue
            choice = {"index": index, "text": event.text, "finish_reason": None, "logprobs": None}
        else:
            choice = {"index": index, "text": "", "finish_reason": event.reason, "logprobs": None}
        yield f"data: {json.dumps({**meta, 'object': 'text_completion', 'choices': [choice]})}\n\n"
    yield "data: [DONE]\n\n"
