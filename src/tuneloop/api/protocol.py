"""OpenAI's wire shapes as typed models: the chat and completions requests (one sampling base, one
validation), their responses and stream chunks, and the model and file objects.

The JSON each model writes is the contract: fields in this order, ``null`` where OpenAI sends null,
and the few keys OpenAI omits (a delta's unset ``role``/``content``, a completion's cache details)
left out. Stream chunks are built and serialised once per token, so they are plain models without
validators, and :func:`sse` frames any model as one server-sent event.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from tuneloop.api.errors import APIError
from tuneloop.data.tools import HERMES, CallSyntax
from tuneloop.engine.engine import TokenEvent
from tuneloop.engine.grammar import (
    FunctionSpec,
    GrammarError,
    GrammarSpec,
    check_schema,
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)
from tuneloop.engine.sampling import SamplingParams
from tuneloop.jobs.spec import Metadata

ROLES = ("system", "developer", "user", "assistant", "tool")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SSE_DONE = "data: [DONE]\n\n"


def _omit_none(value: object) -> bool:
    return value is None


def sse(event: BaseModel) -> str:
    """One server-sent event carrying ``event`` as JSON."""
    return f"data: {event.model_dump_json()}\n\n"


def sse_error(exc: APIError) -> str:
    """The event that ends a stream on failure: the error envelope, as a non-streamed reply has it."""
    return sse(exc.envelope())


# --- requests ---------------------------------------------------------------------------------------


def invalid_unicode(value: object, where: str = "") -> str | None:
    """Where in a decoded JSON body a string is not valid Unicode (a lone surrogate such as the
    escape ``"\\ud800"``, which no tokenizer or database can take), as ``messages[0].content``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = invalid_unicode(key, where) or invalid_unicode(item, f"{where}.{key}".lstrip("."))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := invalid_unicode(item, f"{where}[{i}]")) is not None:
                return found
    return None


class RequestBody(BaseModel):
    """A JSON request body: any string in it that is not valid Unicode is a 400 naming where."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if (where := invalid_unicode(data)) is not None:
            raise _invalid(f"Invalid value for '{where}': the text is not valid Unicode (a lone surrogate).", where)
        return data


class SamplingRequest(RequestBody):
    """What chat and completions requests share; any field not declared is answered with a 400."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    stream: bool = False
    user: str | None = None

    def logprob_settings(self) -> tuple[bool, int]:
        """(whether to compute log-probabilities, how many alternatives per token)."""
        return False, 0

    def grammar(self) -> GrammarSpec | None:
        """What the output must match (None: free text)."""
        return None

    def sampling(self, max_tokens: int) -> SamplingParams:
        """The engine's decoding settings; a 400 for a ``stop`` beyond 4 non-empty strings."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "'stop' takes up to 4 non-empty strings.", param="stop")
        logprobs, top_logprobs = self.logprob_settings()
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=stop,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            logprobs=logprobs, top_logprobs=top_logprobs, grammar=self.grammar(),
        )  # fmt: skip


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON text


class ToolCall(BaseModel):
    """A call in an assistant message (a request's history, or a response)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    refusal: str | None = None  # assistant (echoed back by clients; not rendered)


class FunctionDefinition(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(SamplingRequest):
    """The supported part of the Chat Completions request."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    stream_options: StreamOptions | None = None
    #: keep the request and its answer (``GET /v1/chat/completions``), with these metadata pairs
    store: bool = False
    metadata: Metadata | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    _grammar: tuple[GrammarSpec | None] | None = PrivateAttr(default=None)  # computed once per call syntax
    _syntax: CallSyntax = PrivateAttr(default=HERMES)

    def logprob_settings(self) -> tuple[bool, int]:
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        return self.logprobs, self.top_logprobs or 0

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def calls_tools(self) -> bool:
        """Whether the answer may hold tool calls (tools given and ``tool_choice`` is not ``none``)."""
        return bool(self.tools) and self.tool_choice != "none"

    def rendered_tools(self) -> list[dict] | None:
        """The tools as the chat template takes them (the request's own fields), None without tools."""
        return [t.model_dump(exclude_unset=True) for t in self.tools] if self.tools else None

    def use_syntax(self, syntax: CallSyntax) -> None:
        """Write and read tool calls as the serving model's chat template does (default: ``HERMES``)."""
        if syntax != self._syntax:
            self._syntax, self._grammar = syntax, None

    def grammar(self) -> GrammarSpec | None:
        """The constraint on the output: tool calls (``required``, a named function, or once a call
        starts under ``auto``) in the model's call syntax, a JSON schema, any JSON object; 400s naming
        what cannot be used."""
        if self._grammar is None:
            self._grammar = (self._build_grammar(),)
        return self._grammar[0]

    def _build_grammar(self) -> GrammarSpec | None:
        answer = self._answer_schema()
        functions = self._functions()
        if self.tool_choice is not None and not self.tools:
            raise APIError(400, "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
        if self.parallel_tool_calls is not None and not self.tools:
            raise APIError(
                400, "'parallel_tool_calls' is only allowed when 'tools' are specified.", param="parallel_tool_calls"
            )
        if not self.calls_tools():
            if answer is None:
                return None
            return json_object_grammar() if self.response_format.type == "json_object" else json_schema_grammar(answer)
        choice = self.tool_choice or "auto"
        if isinstance(choice, NamedToolChoice):
            functions = [f for f in functions if f.name == choice.function.name]
            if not functions:
                message = f"Invalid value for 'tool_choice': no function named '{choice.function.name}' in 'tools'."
                raise _invalid(message, "tool_choice")
        try:
            return tool_call_grammar(
                functions, required=choice != "auto", parallel=self.parallel_tool_calls is not False,
                answer=answer if choice == "auto" else None, syntax=self._syntax,
            )  # fmt: skip
        except GrammarError as exc:
            raise _invalid(f"Invalid tools: {exc}", "tools", "invalid_function_parameters") from exc

    def _answer_schema(self) -> dict | None:
        """The JSON schema an answer's text must match (checked), None for free text."""
        fmt = self.response_format
        if isinstance(fmt, JsonObjectFormat):
            return {"type": "object"}
        if not isinstance(fmt, JsonSchemaFormat):
            return None
        spec = fmt.json_schema
        if not _NAME.match(spec.name):
            message = "Invalid 'response_format.json_schema.name': must be 1-64 letters, digits, '_' or '-'."
            raise _invalid(message, "response_format")
        try:
            schema = check_schema(spec.schema_ if spec.schema_ is not None else {})
            json_schema_grammar(schema)  # the engine's own check (references, patterns, types)
        except GrammarError as exc:
            message = f"Invalid schema for response_format '{spec.name}': {exc}"
            raise _invalid(message, "response_format", "invalid_json_schema") from exc
        return schema

    def _functions(self) -> list[FunctionSpec]:
        """The tools as callable functions, each schema checked; a 400 naming the first bad one."""
        functions: list[FunctionSpec] = []
        for i, tool in enumerate(self.tools or []):
            fn = tool.function
            where = f"tools[{i}].function"
            if not _NAME.match(fn.name):
                raise _invalid(f"Invalid '{where}.name': '{fn.name}' must be 1-64 letters, digits, '_' or '-'.",
                               f"{where}.name")  # fmt: skip
            if any(f.name == fn.name for f in functions):
                raise _invalid(f"Duplicate function name in 'tools': '{fn.name}'.", f"{where}.name")
            try:
                parameters = None if fn.parameters is None else check_schema(fn.parameters)
                if parameters is not None:
                    json_schema_grammar(parameters)
            except GrammarError as exc:
                message = f"Invalid schema for function '{fn.name}': {exc}"
                raise _invalid(message, f"{where}.parameters", "invalid_function_parameters") from exc
            functions.append(FunctionSpec(fn.name, parameters))
        return functions

    def rendered_messages(self) -> list[dict]:
        """The messages as the chat template takes them; a 400 for unknown roles, non-text parts, or a
        tool result without a matching earlier call."""
        if not self.messages:
            raise APIError(400, "'messages' must contain at least one message.", param="messages")
        out, call_ids = [], set()
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise APIError(
                    400, f"Invalid value for 'messages[{i}].role': '{m.role}'. Supported roles: {', '.join(ROLES)}.",
                    param=f"messages[{i}].role", code="invalid_value",
                )  # fmt: skip
            if isinstance(m.content, list):
                for j, part in enumerate(m.content):
                    if part.get("type") != "text":
                        raise APIError(400, f"messages[{i}]: only text content parts are supported.",
                                       param=f"messages[{i}].content[{j}].type", code="invalid_value")  # fmt: skip
                    if not isinstance(part.get("text"), str):
                        raise _invalid(f"Invalid value for 'messages[{i}].content[{j}].text': a text part's text "
                                       "must be a string.", f"messages[{i}].content[{j}].text")  # fmt: skip
            role = "system" if m.role == "developer" else m.role
            message: dict[str, Any] = {"role": role, "content": m.content or ""}
            if m.tool_calls and m.role != "assistant":
                raise _invalid(
                    f"messages[{i}]: only assistant messages have 'tool_calls'.", f"messages[{i}].tool_calls"
                )
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
                call_ids.update(c.id for c in m.tool_calls)
            if m.role == "tool":
                if m.tool_call_id not in call_ids:
                    text = (f"Invalid 'messages[{i}]': a message with role 'tool' must answer a tool call of an "
                            f"earlier assistant message; none has id '{m.tool_call_id}'.")  # fmt: skip
                    raise _invalid(text, f"messages[{i}].tool_call_id")
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out


def _invalid(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


class CompletionRequest(SamplingRequest):
    """The supported part of the legacy Completions request."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    def logprob_settings(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0

    def prompts(self) -> list[str]:
        """The prompts; a 400 for an empty one, or several when streaming."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or any(not p for p in prompts):
            raise APIError(400, "'prompt' must be a non-empty string or list of strings.", param="prompt")
        if self.stream and len(prompts) > 1:
            raise APIError(400, "Streaming supports a single prompt.", param="prompt")
        return prompts


# --- shared response parts -------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    """OpenAI's ``usage``; ``cached_tokens`` counts prompt tokens the prefix cache served (chat only)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = Field(default=None, exclude_if=_omit_none)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
        details = PromptTokensDetails(cached_tokens=cached_tokens) if cached_tokens is not None else None
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


def top_logprob(tokenizer, token: int, logprob: float) -> TopLogprob:
    text = tokenizer.decode([token])
    return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))


def token_logprob(tokenizer, event: TokenEvent) -> TokenLogprob | None:
    """OpenAI's chat logprobs entry for one generated token (None when none was computed)."""
    c = event.choice
    if c is None or c.logprob is None:
        return None
    text = tokenizer.decode([c.token])
    return TokenLogprob(
        token=text, logprob=c.logprob, bytes=list(text.encode("utf-8")),
        top_logprobs=[top_logprob(tokenizer, t, lp) for t, lp in (c.top or [])],
    )  # fmt: skip


# --- chat ------------------------------------------------------------------------------------------


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=_omit_none)


class Choice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage
    system_fingerprint: None = None


class StoredChatCompletion(ChatCompletion):
    """A stored completion as listed and retrieved: the answer and its metadata."""

    metadata: dict[str, str] = Field(default_factory=dict)


class StoredMessage(BaseModel):
    """One message of a stored completion's request (``GET /v1/chat/completions/{id}/messages``)."""

    id: str
    role: str
    content: str | None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class UpdateMetadata(RequestBody):
    model_config = ConfigDict(extra="forbid")
    metadata: Metadata | None


class FunctionDelta(BaseModel):
    name: str | None = Field(default=None, exclude_if=_omit_none)
    arguments: str | None = Field(default=None, exclude_if=_omit_none)


class ToolCallDelta(BaseModel):
    """A streamed call: index, id, type and name (arguments "") in its first chunk, then fragments."""

    index: int
    id: str | None = Field(default=None, exclude_if=_omit_none)
    type: Literal["function"] | None = Field(default=None, exclude_if=_omit_none)
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_omit_none)
    content: str | None = Field(default=None, exclude_if=_omit_none)
    tool_calls: list[ToolCallDelta] | None = Field(default=None, exclude_if=_omit_none)


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


# --- completions -----------------------------------------------------------------------------------


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []

    def add(self, tokenizer, event: TokenEvent, offset: int) -> None:
        """Record the token of ``event`` (if it has a log-probability) at ``offset`` in the text."""
        c = event.choice
        if c is None or c.logprob is None:
            return
        self.tokens.append(tokenizer.decode([c.token]))
        self.token_logprobs.append(c.logprob)
        self.top_logprobs.append({tokenizer.decode([t]): v for t, v in c.top or []})
        self.text_offset.append(offset)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


# --- models and files ------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: None = None
    expires_at: None = None


Item = TypeVar("Item", bound=BaseModel)


class CursorPage(BaseModel, Generic[Item]):
    """OpenAI's cursor-paginated list: a page of objects with ids, its first and last id, whether more follow."""

    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, data: list[Item], has_more: bool) -> CursorPage[Item]:
        return cls(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                   has_more=has_more)  # fmt: skip


FileList = CursorPage[FileObject]
StoredCompletionList = CursorPage[StoredChatCompletion]
StoredMessageList = CursorPage[StoredMessage]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True
