"""Run candidates over a held-out file through any OpenAI-compatible Chat Completions endpoint.

Each held-out chat example is split into a prompt (every message before its last assistant
message) and a reference (that message's text; its tool calls, if any, in the default call format
of ``data/tools.py``, as the candidates' returned ``tool_calls`` are written too). An example's
``tools`` are sent with its request. Every candidate answers every prompt with
greedy decoding; requests of all candidates are interleaved over a small thread pool, so load
changes on the server affect all candidates alike. Latency is the wall time of each request as
the client sees it (with ``concurrency`` > 1 it includes queueing on a server that answers one
request at a time).

On a label set (``tuneloop.evals.labels``) with a training file, the classical baseline
(``tuneloop.evals.baseline``: TF-IDF + logistic regression) answers in-process as one more
candidate, graded like the others; every candidate's answers are also sorted into correct, wrong
label and invalid label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuneloop.data.examples import ChatExample, DataError, load_examples
from tuneloop.data.render import answer_text, content_text
from tuneloop.errors import TuneloopError
from tuneloop.evals import baseline as classical
from tuneloop.evals.fewshot import DEFAULT_TOKEN_BUDGET, FewShotPrompter, estimate_tokens
from tuneloop.evals.graders import (
    GradeResult,
    PairwiseJudge,
    StringOperation,
    Verdict,
    select_graders,
)
from tuneloop.evals.labels import Outcome, known_labels, label_outcomes

if TYPE_CHECKING:
    import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_API_KEY = "tuneloop"
#: HTTP statuses that mean a candidate cannot work at all (stop the run instead of recording errors).
FATAL_STATUSES = (401, 403, 404)


class EndpointUnreachableError(TuneloopError):
    """No server answers at a candidate's (or the judge's) base URL."""

    exit_code = 2


class CandidateError(TuneloopError):
    """A candidate the endpoint rejects outright (unknown model, bad key)."""

    exit_code = 2


@dataclass
class Candidate:
    """One row of the comparison: a model behind an OpenAI-compatible endpoint, prompted one way."""

    name: str
    model: str
    #: None: the run's ``base_url``.
    base_url: str | None = None
    #: None: the run's ``api_key``.
    api_key: str | None = None
    #: None: zero-shot; ``"auto"``: as many training shots as fit the token budget; an int: that many.
    few_shot: int | Literal["auto"] | None = None
    #: Messages that replace the prompts' system messages (a teacher's long instruction prompt, its few-shot turns).
    preamble: tuple[dict, ...] | None = None
    #: The teacher of a distillation: with ``EvalConfig.reference = "teacher"`` its answers are the references.
    teacher: bool = False

    @property
    def is_few_shot(self) -> bool:
        """Whether training examples are shown before each question."""
        return self.few_shot is not None and self.few_shot != 0


@dataclass
class JudgeConfig:
    """The model that judges candidates pairwise (any OpenAI-compatible endpoint)."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    max_tokens: int = 16


@dataclass
class EvalConfig:
    """Everything one evaluation run needs."""

    #: Held-out chat JSONL; the last assistant message of each example is the reference.
    data: Path
    candidates: list[Candidate]
    #: Training chat JSONL the few-shot examples are drawn from.
    train: Path | None = None
    base_url: str = DEFAULT_BASE_URL
    api_key: str = DEFAULT_API_KEY
    #: ``auto`` or a grader name (see ``tuneloop.evals.graders.GRADER_NAMES``).
    grader: str = "auto"
    #: The operation of the ``string_check`` grader.
    string_check_operation: StringOperation = "eq"
    judge: JudgeConfig | None = None
    #: Evaluate only the first N held-out examples.
    limit: int | None = None
    max_tokens: int = 256
    #: Requests in flight at once.
    concurrency: int = 4
    #: Token budget of the shots when a candidate's ``few_shot`` is ``"auto"``.
    fewshot_budget: int = DEFAULT_TOKEN_BUDGET
    #: Counts tokens of few-shot examples (default: about four characters per token).
    count_tokens: Callable[[str], int] | None = None
    seed: int = 0
    #: Seconds before a request is abandoned.
    timeout: float = 600.0
    #: Retries of a failed request (connection errors, 429, 5xx) by the ``openai`` client.
    max_retries: int = 1
    #: Candidate the ratios are taken against (default: the first few-shot candidate, else the first).
    baseline: str | None = None
    #: On a label set with a training file, add the TF-IDF + logistic regression candidate (needs scikit-learn).
    classical_baseline: bool = True
    progress: bool = True
    #: ``"teacher"``: also grade every candidate against the teacher candidate's answers
    #: (``teacher_agreement``, then the primary metric); the data's references are still graded.
    reference: Literal["data", "teacher"] = "data"


@dataclass
class EvalItem:
    """One held-out example: the prompt sent and the reference answer expected."""

    index: int
    line: int
    prompt: list[dict[str, Any]]
    reference: str
    #: The example's tools (OpenAI's ``tools`` list), sent with the request.
    tools: list[dict[str, Any]] | None = None


@dataclass
class ExampleResult:
    """One candidate's answer to one item."""

    index: int
    output: str
    latency_s: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    shots: int = 0
    error: str | None = None
    finish_reason: str | None = None


@dataclass
class CandidateRun:
    """One candidate's answers, grades and (when judged) verdicts against the baseline."""

    candidate: Candidate
    results: list[ExampleResult]
    grades: list[GradeResult] = field(default_factory=list)
    verdicts: list[Verdict] | None = None
    #: Per example correct / wrong / invalid, when the references are a label set.
    label_outcomes: list[Outcome] | None = None


@dataclass
class EvalRun:
    """The raw outcome of an evaluation; ``tuneloop.evals.report.build_report`` summarises it."""

    config: EvalConfig
    items: list[EvalItem]
    runs: list[CandidateRun]
    baseline: str
    task: str
    started_at: float
    elapsed_s: float
    #: The known labels (held-out references and training answers), None when they are not a label set.
    labels: list[str] | None = None
    #: Notes for the reader (a candidate left out, and why).
    notes: list[str] = field(default_factory=list)


def load_items(path: Path, limit: int | None = None) -> list[EvalItem]:
    """Held-out chat examples as (prompt, reference) items."""
    fmt, examples = load_examples(path)
    if fmt != "chat":
        raise DataError(f"{path}: evaluation needs chat examples ({{'messages': [...]}}), not {fmt}")
    items = []
    for example in examples:
        assert isinstance(example, ChatExample)
        messages = example.messages
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or last == 0:
            raise DataError(f"{path}:{example.line}: no assistant message after the prompt to use as the reference")
        prompt = [_request_message(m) for m in messages[:last]]
        items.append(EvalItem(len(items), example.line, prompt, answer_text(messages[last]), example.tools))
        if limit is not None and len(items) >= limit:
            break
    return items


def _request_message(message: dict[str, Any]) -> dict[str, Any]:
    """A history message as a request carries it: text content, and its calls or call id when it has them."""
    out = {"role": message["role"], "content": content_text(message.get("content"))}
    for key in ("tool_calls", "tool_call_id", "name"):
        if message.get(key):
            out[key] = message[key]
    return out


def load_training_conversations(path: Path) -> list[list[dict[str, Any]]]:
    """The conversations of a chat training file (the few-shot pool, the classical baseline's data).

    Assistant turns that call tools read as text in the default call format (what a shot shows)."""
    fmt, examples = load_examples(path)
    if fmt != "chat":
        raise DataError(f"{path}: the training file must hold chat examples, not {fmt}")
    return [
        [{**m, "content": answer_text(m)} if m.get("role") == "assistant" else m for m in e.messages]
        for e in examples
        if isinstance(e, ChatExample)
    ]


def schema_check(items: Sequence[EvalItem]) -> Callable[[str, Any], bool] | None:
    """Checks a call's arguments against its function's JSON schema (with ``jsonschema``, ``tuneloop[eval]``)."""
    try:
        import jsonschema
    except ImportError:
        return None
    schemas = {
        t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
        for item in items
        for t in item.tools or []
        if isinstance(t.get("function"), dict) and "name" in t["function"]
    }

    def check(name: str, arguments: Any) -> bool:
        schema = schemas.get(name)
        return schema is not None and jsonschema.Draft202012Validator(schema).is_valid(arguments)

    return check


def choose_baseline(candidates: Sequence[Candidate], name: str | None = None) -> str:
    """The candidate ratios are taken against: ``name``, else the first few-shot candidate, else the first."""
    names = [c.name for c in candidates]
    if name is not None:
        if name not in names:
            raise TuneloopError(f"baseline '{name}' is not a candidate ({', '.join(names)})")
        return name
    return next((c.name for c in candidates if c.is_few_shot), names[0])


class _Clients:
    """One ``openai.OpenAI`` client per (base URL, key), shared by the worker threads."""

    def __init__(self, timeout: float, max_retries: int):
        self.timeout, self.max_retries = timeout, max_retries
        self._clients: dict[tuple[str, str], openai.OpenAI] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str, api_key: str) -> openai.OpenAI:
        import openai

        key = (base_url, api_key)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = openai.OpenAI(
                    base_url=base_url, api_key=api_key, max_retries=self.max_retries, timeout=self.timeout
                )
            return self._clients[key]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return f"{body['message']} (HTTP {exc.status_code})"
    return f"HTTP {exc.status_code}"


def chat_once(
    client: openai.OpenAI,
    model: str,
    messages: list[dict],
    max_tokens: int,
    base_url: str,
    label: str,
    tools: list[dict] | None = None,
) -> tuple[str, float, int | None, int | None, str | None]:
    """One greedy chat completion: (text, latency s, prompt tokens, completion tokens, finish reason).

    The text is the answer's content followed by its tool calls in the default call format.

    Connection failures and outright rejections (401/403/404) raise ``TuneloopError``s; other
    API errors propagate as ``openai.APIStatusError``.
    """
    import openai

    started = time.perf_counter()
    try:
        extra = {"tools": tools} if tools else {}
        response = client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens, **extra
        )
    except openai.APITimeoutError as exc:
        raise EndpointUnreachableError(f"{label}: the server at {base_url} did not answer in time") from exc
    except openai.APIConnectionError as exc:
        raise EndpointUnreachableError(f"{label}: cannot reach an OpenAI-compatible server at {base_url}") from exc
    except openai.APIStatusError as exc:
        if exc.status_code in FATAL_STATUSES:
            raise CandidateError(f"{label}: model '{model}' at {base_url}: {_status_message(exc)}") from exc
        raise
    latency = time.perf_counter() - started
    choice = response.choices[0] if response.choices else None
    text = answer_text(choice.message.model_dump(exclude_none=True)) if choice else ""
    usage = response.usage
    return (
        text,
        latency,
        usage.prompt_tokens if usage else None,
        usage.completion_tokens if usage else None,
        choice.finish_reason if choice else None,
    )


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="req", disable=None if enabled else True, leave=False)


def _run_all(tasks: list[Callable[[], Any]], workers: int, bar) -> list[Any]:
    """Run tasks on a thread pool in order of submission; the first TuneloopError stops the run."""
    results: list[Any] = [None] * len(tasks)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures: list[Future] = [pool.submit(task) for task in tasks]
        try:
            for i, future in enumerate(futures):
                results[i] = future.result()
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _with_preamble(prompt: list[dict], preamble: tuple[dict, ...] | None) -> list[dict]:
    """``prompt`` with its system messages replaced by ``preamble`` (unchanged when None)."""
    if preamble is None:
        return prompt
    return [*(dict(m) for m in preamble), *(m for m in prompt if m.get("role") not in ("system", "developer"))]


def _prompts(config: EvalConfig, candidate: Candidate, items: list[EvalItem], pool) -> list[tuple[list[dict], int]]:
    if not candidate.is_few_shot:
        return [(_with_preamble(item.prompt, candidate.preamble), 0) for item in items]
    if pool is None:
        raise TuneloopError(f"candidate '{candidate.name}' is few-shot: give a training file to draw examples from")
    k = None if candidate.few_shot == "auto" else int(candidate.few_shot)  # type: ignore[arg-type]
    count = config.count_tokens or estimate_tokens
    prompter = FewShotPrompter(pool, k=k, token_budget=config.fewshot_budget, seed=config.seed, count_tokens=count)
    return [prompter.build(_with_preamble(item.prompt, candidate.preamble)) for item in items]


def teacher_of(config: EvalConfig) -> Candidate | None:
    """The teacher candidate (at most one); required when the references are the teacher's answers."""
    teachers = [c for c in config.candidates if c.teacher]
    if len(teachers) > 1:
        raise TuneloopError(f"only one teacher candidate, not {len(teachers)}")
    if config.reference == "teacher" and not teachers:
        raise TuneloopError("the references are the teacher's answers: give a teacher candidate")
    return teachers[0] if teachers else None


def grade_against_teacher(runs: list[CandidateRun], teacher: str, config: EvalConfig, check) -> None:
    """Add ``teacher_agreement`` to every run: its answers graded against the teacher's, by the grader
    the teacher's answers call for (labels of its own on a classification task)."""
    references = [r.output for r in next(run for run in runs if run.candidate.name == teacher).results]
    grader = select_graders(references, config.grader, config.string_check_operation, (), check)[0]
    for run in runs:
        result = grader.grade([r.output for r in run.results], references)
        agreement = result.metrics[result.primary]
        run.grades.insert(0, GradeResult("teacher", "teacher_agreement", {"teacher_agreement": agreement},
                                         result.scores))  # fmt: skip


def classical_run(
    config: EvalConfig, items: list[EvalItem], pool: list[list[dict[str, Any]]] | None, labels: list[str] | None
) -> tuple[CandidateRun | None, str | None]:
    """The TF-IDF + logistic regression candidate's answers, or a note on why there is none.

    Only on a label set with a training file; without scikit-learn the note says how to get it.
    """
    if labels is None or pool is None or not config.classical_baseline:
        return None, None
    if not classical.available():
        return None, classical.MISSING_NOTE
    texts, answers = classical.training_pairs(pool)
    if not texts:
        return None, f"note: {config.train} has no (user, assistant) pairs to fit the TF-IDF baseline on"
    questions = [classical.last_text(item.prompt, "user") or "" for item in items]
    outputs, latencies, fit_s = classical.fit_predict(texts, answers, questions)
    model = f"{classical.MODEL}, fit on {len(texts)} examples in {fit_s:.1f} s"
    candidate = Candidate(classical.NAME, model, base_url="in-process")
    results = [ExampleResult(i, o, t) for i, (o, t) in enumerate(zip(outputs, latencies, strict=True))]
    return CandidateRun(candidate, results), None


def run_eval(config: EvalConfig) -> EvalRun:
    """Ask every candidate every held-out question, grade the answers, judge pairwise if configured."""
    import openai

    if not config.candidates:
        raise TuneloopError("no candidates to evaluate")
    names = [c.name for c in config.candidates]
    if len(set(names)) != len(names) or classical.NAME in names:
        raise TuneloopError(f"candidate names must be unique (and not '{classical.NAME}'): {names}")
    items = load_items(config.data, config.limit)
    references = [item.reference for item in items]
    pool = load_training_conversations(config.train) if config.train is not None else None
    train_answers = classical.training_pairs(pool)[1] if pool else []
    check = schema_check(items) if any(item.tools for item in items) else None
    graders = select_graders(references, config.grader, config.string_check_operation, train_answers, check)
    if not graders and config.judge is None:
        raise TuneloopError("the judge grader needs a judge model")
    if config.judge is not None and len(config.candidates) < 2:
        raise TuneloopError("the judge compares candidates with the baseline: give at least two candidates")
    baseline = choose_baseline(config.candidates, config.baseline)
    teacher = teacher_of(config)
    if config.reference == "teacher" and not graders:
        raise TuneloopError("agreement with the teacher needs a reference grader, not only the judge")
    tool_task = bool(graders) and graders[0].name == "tools"
    labels = None if tool_task else known_labels(references, train_answers)
    prompts = {c.name: _prompts(config, c, items, pool) for c in config.candidates}

    clients = _Clients(config.timeout, config.max_retries)
    started_at, started = time.time(), time.perf_counter()

    def ask(candidate: Candidate, item: EvalItem) -> ExampleResult:
        messages, shots = prompts[candidate.name][item.index]
        base_url = candidate.base_url or config.base_url
        client = clients.get(base_url, candidate.api_key or config.api_key)
        try:
            text, latency, p, c, finish = chat_once(
                client, candidate.model, messages, config.max_tokens, base_url, candidate.name, item.tools
            )
        except openai.APIStatusError as exc:
            return ExampleResult(item.index, "", 0.0, shots=shots, error=_status_message(exc))
        return ExampleResult(item.index, text, latency, p, c, shots, finish_reason=finish)

    try:
        tasks = [
            (lambda c=c, it=it: ask(c, it))  # interleave candidates so load affects all alike
            for it in items
            for c in config.candidates
        ]
        with _progress(len(tasks), "eval", config.progress) as bar:
            answers = _run_all(tasks, config.concurrency, bar)
        runs = [CandidateRun(c, answers[j :: len(config.candidates)]) for j, c in enumerate(config.candidates)]
        local, note = classical_run(config, items, pool, labels)
        runs += [local] if local is not None else []
        for run in runs:
            outputs = [r.output for r in run.results]
            run.grades = [g.grade(outputs, references) for g in graders]
            run.label_outcomes = label_outcomes(outputs, references, labels) if labels is not None else None
        if teacher is not None and config.reference == "teacher":
            grade_against_teacher(runs, teacher.name, config, check)
        if config.judge is not None:
            _judge(config, config.judge, items, runs, baseline, clients)
    finally:
        clients.close()
    task = graders[0].name if graders else "judge"
    elapsed = time.perf_counter() - started
    return EvalRun(config, items, runs, baseline, task, started_at, elapsed, labels, [note] if note else [])


def _judge(
    config: EvalConfig, judge: JudgeConfig, items: list[EvalItem], runs: list[CandidateRun], baseline: str, clients
) -> None:
    """Judge every candidate against the baseline, example by example."""
    base_url = judge.base_url or config.base_url
    client = clients.get(base_url, judge.api_key or config.api_key)

    def complete(messages: list[dict]) -> str:
        import openai

        try:
            return chat_once(client, judge.model, messages, judge.max_tokens, base_url, "judge")[0]
        except openai.APIStatusError:
            return ""  # an unreadable verdict: counted as a tie, and as unparsed

    pairwise = PairwiseJudge(complete, seed=config.seed)
    base_run = next(r for r in runs if r.candidate.name == baseline)
    others = [r for r in runs if r.candidate.name != baseline]
    tasks = [
        (
            lambda r=r, it=it: pairwise.compare(
                it.index, it.prompt, it.reference, r.results[it.index].output, base_run.results[it.index].output
            )
        )
        for r in others
        for it in items
    ]
    with _progress(len(tasks), "judge", config.progress) as bar:
        verdicts = _run_all(tasks, config.concurrency, bar)
    for k, run in enumerate(others):
        run.verdicts = verdicts[k * len(items) : (k + 1) * len(items)]
    base_run.verdicts = [Verdict("tie", False, True, None) for _ in items]
