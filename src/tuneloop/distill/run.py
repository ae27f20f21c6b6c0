"""A distillation run: ask the teacher (or read stored answers), judge each answer, write the kept
examples, validate them as ``tuneloop data validate`` does, and split them into train and valid.

Identical requests are asked once per run, and an answer in the cache is never asked again, so a
run that was interrupted, or is repeated, pays the teacher only for what it has not answered yet.
Examples keep the order of their prompts whatever the concurrency.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.split import split_file
from tuneloop.data.validate import validate_file
from tuneloop.distill.cache import AnswerCache, request_key
from tuneloop.distill.examples import Answer, ExampleSet, Prompt, student_messages
from tuneloop.distill.teacher import Sampling, Teacher, TeacherError, TeacherRequestError, teacher_request
from tuneloop.errors import TuneloopError
from tuneloop.fileio import write_atomic

EXAMPLES_FILE = "distilled.jsonl"  # every kept example, before the split
TRAIN_FILE = "train.jsonl"
VALID_FILE = "valid.jsonl"
CACHE_FILE = "teacher-cache.jsonl"

#: Called with (answers done, answers to get) when asking starts and after each answer.
Progress = Callable[[int, int], None]


class NothingKeptError(TuneloopError):
    """Every answer was dropped (or there was none): nothing to train on, no file written."""


@dataclass(frozen=True)
class StudentOptions:
    """How the teacher's prompt becomes the student's (see ``tuneloop.distill.examples``)."""

    system: str | None = None
    last_turn_only: bool = False


@dataclass
class DistillSummary:
    """What a run did: where the answers came from, what was kept and dropped (and why), the files."""

    source: str  # "prompts" or "stored"
    inputs: int = 0  # prompts read, or stored completions listed
    cached: int = 0  # answers taken from the cache (not paid for again)
    asked: int = 0  # answers bought from the teacher in this run
    teacher_attempts: int = 0  # requests sent, retries included
    retries: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_examples: list[dict[str, str]] = field(default_factory=list)  # the first few, with their source
    truncated: int = 0  # kept answers cut at max_tokens
    train: int = 0
    valid: int = 0
    files: dict[str, str] = field(default_factory=dict)  # examples, train, valid, cache
    validation_errors: dict[str, int] = field(default_factory=dict)
    validation_warnings: dict[str, int] = field(default_factory=dict)
    job: dict[str, Any] | None = None  # the fine-tuning job created with --fine-tune

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def record(self, examples: ExampleSet) -> None:
        """Take the counts of a finished :class:`ExampleSet`."""
        self.kept, self.dropped, self.truncated = len(examples.examples), dict(examples.drops), examples.truncated
        self.dropped_examples = [
            {"source": d.source, "reason": d.reason.value, "detail": d.detail} for d in examples.dropped
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dropped_total": self.n_dropped}


def ask_teacher(
    teacher: Teacher,
    requests: dict[str, dict[str, Any]],
    cache: AnswerCache,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> dict[str, Answer | str]:
    """Ask every request (by cache key) with ``concurrency`` in flight; each answer is cached as it arrives.

    Returns key -> answer, or key -> error text for a request the teacher failed. A ``TeacherError``
    (unreachable, refused key) stops the run: no new request starts, and it is raised once those in
    flight have ended.
    """
    results: dict[str, Answer | str] = {}
    stop = threading.Event()

    def one(key: str, body: dict[str, Any]) -> Answer | str | None:
        if stop.is_set():
            return None
        try:
            answer, usage = teacher.ask(body, stop)
        except TeacherRequestError as exc:
            return str(exc)
        except TeacherError:
            stop.set()
            raise
        try:
            cache.add(key, answer, usage)
        except OSError as exc:  # a full disk, no permission: stop, as for an unusable teacher
            stop.set()
            raise TeacherError(f"cannot write the cache {cache.path.name}: {exc.strerror or exc}") from None
        return answer

    total = len(requests)
    if progress is not None:
        progress(0, total)
    fatal: TeacherError | None = None
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="teacher")
    try:
        pending: dict[Future, str] = {pool.submit(one, key, body): key for key, body in requests.items()}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                key = pending.pop(future)
                try:
                    result = future.result()
                except TeacherError as exc:
                    fatal = fatal or exc
                    continue
                if result is not None:
                    results[key] = result
                    if progress is not None:
                        progress(len(results), total)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    if fatal is not None:
        raise fatal
    return results


def distill_prompts(
    prompts: list[Prompt],
    teacher: Teacher,
    model: str,
    cache: AnswerCache,
    *,
    sampling: Sampling | None = None,
    student: StudentOptions | None = None,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> tuple[ExampleSet, DistillSummary]:
    """Ask ``model`` at the teacher for every prompt not answered in the cache yet; judge every answer."""
    sampling, student = sampling or Sampling(), student or StudentOptions()
    requests = [teacher_request(model, p, sampling) for p in prompts]
    keys = [request_key(body) for body in requests]
    bodies = dict(zip(keys, requests, strict=True))
    missing = {key: body for key, body in bodies.items() if key not in cache}
    summary = DistillSummary("prompts", inputs=len(prompts), cached=len(bodies) - len(missing))
    before_attempts, before_retries = teacher.attempts, teacher.retries
    results = ask_teacher(teacher, missing, cache, concurrency, progress)
    summary.asked = sum(isinstance(r, Answer) for r in results.values())
    summary.teacher_attempts, summary.retries = teacher.attempts - before_attempts, teacher.retries - before_retries
    examples = ExampleSet()
    for key, prompt in zip(keys, prompts, strict=True):
        answer = cache.get(key)
        error = results.get(key) if answer is None else None
        messages = student_messages(prompt.messages, student.system, student.last_turn_only)
        examples.add(prompt, messages, answer, error if isinstance(error, str) else "not answered")
    summary.record(examples)
    return examples, summary


def distill_stored(
    answered: Iterable[tuple[Prompt, Answer]], student: StudentOptions | None = None
) -> tuple[ExampleSet, DistillSummary]:
    """Judge stored answers (``tuneloop.distill.stored.stored_answers``) as the teacher's."""
    student = student or StudentOptions()
    examples, summary = ExampleSet(), DistillSummary("stored")
    for prompt, answer in answered:
        summary.inputs += 1
        examples.add(prompt, student_messages(prompt.messages, student.system, student.last_turn_only), answer)
    summary.record(examples)
    return examples, summary


def write_dataset(
    examples: ExampleSet, out_dir: Path, summary: DistillSummary, valid_fraction: float = 0.1, seed: int = 0
) -> None:
    """Write the kept examples to ``out_dir`` (``distilled.jsonl``), validate the file, split it into
    ``train.jsonl`` and ``valid.jsonl`` (as ``tuneloop data split`` does); counts go into ``summary``."""
    if not summary.inputs:
        what = "no stored completion matches the filter" if summary.source == "stored" else "no prompts"
        raise NothingKeptError(f"{what}; nothing written")
    if not examples.examples:
        dropped = ", ".join(f"{n} {reason}" for reason, n in summary.dropped.items() if n)
        raise NothingKeptError(f"no example was kept ({dropped}); nothing written")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EXAMPLES_FILE
    write_atomic(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples.examples))
    report = validate_file(path)
    summary.validation_errors, summary.validation_warnings = report.error_counts, report.warning_counts
    split = split_file(path, out_dir / TRAIN_FILE, out_dir / VALID_FILE, valid_fraction, seed)
    summary.train, summary.valid = split.train, split.valid
    summary.files.update(examples=str(path), train=str(split.train_out), valid=str(split.valid_out))
