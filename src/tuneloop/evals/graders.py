"""Graders: score model outputs against reference answers (pure functions, no I/O).

Names follow OpenAI Evals where one exists (``string_check``, ``text_similarity`` with ``bleu``,
``rouge_l`` and ``fuzzy_match``). Every grader takes the outputs and references of one candidate and
returns a :class:`GradeResult`: corpus metrics, one score in [0, 1] per example (the grader's
primary measure, used to find examples where candidates disagree) and optional details.

``select_graders`` picks graders from the references (and training answers): tool calls → the
tool-call grader (``tool_calls.py``); a label set → classification;
JSON objects → JSON validity and key/value F1; anything else → text similarity plus normalised
exact match. The pairwise judge compares two candidates and lives apart (:class:`PairwiseJudge`).
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tuneloop.data.tools import TOOL_CALL_OPEN, parse_tool_calls
from tuneloop.errors import TuneloopError

GraderName = Literal["auto", "string_check", "exact", "classification", "json", "tools", "text_similarity", "judge"]
GRADER_NAMES: tuple[str, ...] = (
    "auto", "string_check", "exact", "classification", "json", "tools", "text_similarity", "judge"
)  # fmt: skip
StringOperation = Literal["eq", "ne", "like", "ilike"]
SimilarityMetric = Literal["bleu", "rouge_l", "fuzzy_match"]

#: Auto-selection: up to this many distinct references make a label set at any size.
MAX_LABELS = 20
#: More distinct references than ``MAX_LABELS`` make a label set only with this many examples per label on average.
MIN_EXAMPLES_PER_LABEL = 2
#: A label seen once must be at most this long, without whitespace, to count as a label.
MAX_SINGLETON_LABEL_CHARS = 32
#: No label is longer than this.
MAX_LABEL_CHARS = 64
#: The predicted "label" of an output that names none of the labels.
NO_LABEL = "(none)"


class GraderError(TuneloopError):
    """A grader that cannot be used as asked (unknown name, bad option)."""

    exit_code = 2


@dataclass
class GradeResult:
    """One grader's verdict on one candidate."""

    grader: str
    #: The name of the metric ``scores`` measures (a key of ``metrics``).
    primary: str
    #: Corpus-level metrics, each in [0, 1].
    metrics: dict[str, float]
    #: One score in [0, 1] per example.
    scores: list[float]
    #: Grader-specific extras (per-label figures, confusion counts, ...).
    details: dict[str, Any] = field(default_factory=dict)


class Grader(Protocol):
    """What every reference-based grader provides."""

    name: str

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Score ``outputs[i]`` against ``references[i]``."""
        ...


def _check_lengths(outputs: Sequence[str], references: Sequence[str]) -> None:
    if len(outputs) != len(references):
        raise GraderError(f"{len(outputs)} outputs for {len(references)} references")


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# --------------------------------------------------------------------------- text normalisation

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokenize(text: str) -> list[str]:
    """Words and single punctuation marks, case kept (the tokenisation BLEU uses)."""
    return _WORD.findall(text)


# --------------------------------------------------------------------------- string_check


def string_check(output: str, reference: str, operation: StringOperation = "eq") -> bool:
    """OpenAI's ``string_check``: ``eq``/``ne`` compare exactly; ``like``/``ilike`` test containment.

    ``like`` is case-sensitive, ``ilike`` case-insensitive; both pass when the reference occurs in
    the output.
    """
    if operation == "eq":
        return output == reference
    if operation == "ne":
        return output != reference
    if operation == "like":
        return reference in output
    if operation == "ilike":
        return reference.lower() in output.lower()
    raise GraderError(f"unknown string_check operation '{operation}' (eq, ne, like, ilike)")


@dataclass
class StringCheckGrader:
    """Pass rate of :func:`string_check` (outputs are stripped of surrounding whitespace first)."""

    operation: StringOperation = "eq"
    name: str = "string_check"

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Per example 1 when the check passes, else 0."""
        _check_lengths(outputs, references)
        pairs = zip(outputs, references, strict=True)
        scores = [float(string_check(o.strip(), r.strip(), self.operation)) for o, r in pairs]
        return GradeResult(
            self.name, "string_check", {"string_check": _mean(scores)}, scores, {"operation": self.operation}
        )


# --------------------------------------------------------------------------- exact match


@dataclass
class ExactMatchGrader:
    """Exact match after :func:`normalize_text`."""

    name: str = "exact"

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Per example 1 when the normalised texts are equal."""
        _check_lengths(outputs, references)
        scores = [float(normalize_text(o) == normalize_text(r)) for o, r in zip(outputs, references, strict=True)]
        return GradeResult(self.name, "exact_match", {"exact_match": _mean(scores)}, scores)


# --------------------------------------------------------------------------- classification


def is_label_set(references: Sequence[str]) -> bool:
    """Whether the references look like labels of a classification task.

    True when some reference repeats; there are at most ``MAX_LABELS`` distinct references, or at
    least ``MIN_EXAMPLES_PER_LABEL`` references per distinct one (150 intents in 600 examples);
    none is empty, spans lines or exceeds ``MAX_LABEL_CHARS``; and each is either seen at least
    twice or short (``MAX_SINGLETON_LABEL_CHARS``) without whitespace.
    """
    refs = [r.strip() for r in references]
    counts = Counter(refs)
    few = len(counts) <= MAX_LABELS or len(refs) >= MIN_EXAMPLES_PER_LABEL * len(counts)
    if not refs or not few or len(counts) == len(refs):
        return False
    for label, count in counts.items():
        if not label or "\n" in label or len(label) > MAX_LABEL_CHARS:
            return False
        if count < 2 and (len(label) > MAX_SINGLETON_LABEL_CHARS or any(c.isspace() for c in label)):
            return False
    return True


def _label_key(text: str) -> str:
    return " ".join(text.strip().strip(string.punctuation + " ").casefold().split())


def predict_label(output: str, labels: Sequence[str]) -> str:
    """The label an output names: an exact (case-insensitive) match, else the label mentioned first.

    Returns ``NO_LABEL`` when the output mentions none of the labels.
    """
    key = _label_key(output)
    for label in labels:
        if _label_key(label) == key:
            return label
    best: tuple[int, int, str] | None = None
    for label in labels:
        pattern = r"(?<!\w)" + re.escape(label.strip()) + r"(?!\w)"
        match = re.search(pattern, output, flags=re.IGNORECASE)
        if match:  # earliest mention wins; at one position the longer label wins ("not spam" over "spam")
            candidate = (match.start(), -len(label), label)
            best = candidate if best is None or candidate < best else best
    return best[2] if best else NO_LABEL


def classification_metrics(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1 over ``labels``, per-label precision/recall/F1 and the confusion counts."""
    n = len(references)
    per_label: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references, strict=True))
        fp = sum(p == label and r != label for p, r in zip(predictions, references, strict=True))
        fn = sum(p != label and r == label for p, r in zip(predictions, references, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    confusion: dict[str, dict[str, int]] = {}
    for p, r in zip(predictions, references, strict=True):
        row = confusion.setdefault(r, {})
        row[p] = row.get(p, 0) + 1
    mistakes = Counter((r, p) for p, r in zip(predictions, references, strict=True) if p != r)
    return {
        "accuracy": sum(p == r for p, r in zip(predictions, references, strict=True)) / n if n else 0.0,
        "macro_f1": _mean(v["f1"] for v in per_label.values()),
        "no_label_rate": sum(p == NO_LABEL for p in predictions) / n if n else 0.0,
        "per_label": per_label,
        "confusion": confusion,
        "top_confusions": [
            {"reference": r, "predicted": p, "count": c}
            for (r, p), c in sorted(mistakes.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        ],
    }


@dataclass
class ClassificationGrader:
    """Accuracy, macro-F1 and a confusion summary over a small label set.

    An output counts as the label it names (:func:`predict_label`); ``strict_accuracy`` also
    requires nothing else in the output.
    """

    labels: list[str] = field(default_factory=list)
    name: str = "classification"

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Per example 1 when the predicted label is the reference."""
        _check_lengths(outputs, references)
        refs = [r.strip() for r in references]
        labels = self.labels or sorted(set(refs))
        predictions = [predict_label(o, labels) for o in outputs]
        stats = classification_metrics(predictions, refs, labels)
        strict = _mean(float(_label_key(o) == _label_key(r)) for o, r in zip(outputs, refs, strict=True))
        metrics = {
            "accuracy": stats["accuracy"],
            "macro_f1": stats["macro_f1"],
            "strict_accuracy": strict,
            "no_label_rate": stats["no_label_rate"],
        }
        scores = [float(p == r) for p, r in zip(predictions, refs, strict=True)]
        details = {k: stats[k] for k in ("per_label", "confusion", "top_confusions")}
        details["labels"] = list(labels)
        details["predictions"] = predictions
        return GradeResult(self.name, "accuracy", metrics, scores, details)


# --------------------------------------------------------------------------- JSON

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_json_object(text: str) -> dict | None:
    """The JSON object in an output (surrounding whitespace and a Markdown code fence allowed), else None."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def flatten_json(obj: Any, prefix: str = "") -> set[tuple[str, str]]:
    """(dotted key path, canonical JSON value) pairs of an object's leaves; lists are leaves."""
    if isinstance(obj, dict) and obj:
        pairs: set[tuple[str, str]] = set()
        for key, value in obj.items():
            pairs |= flatten_json(value, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if not prefix:
        return set()
    return {(prefix, json.dumps(obj, sort_keys=True, ensure_ascii=False))}


def set_f1(predicted: set, reference: set) -> float:
    """F1 of two sets; 1 when both are empty."""
    if not predicted and not reference:
        return 1.0
    tp = len(predicted & reference)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(predicted), tp / len(reference)
    return 2 * precision * recall / (precision + recall)


@dataclass
class JsonGrader:
    """Structured outputs: JSON validity, key/value F1 and key F1 against reference objects.

    Values must match exactly (as canonical JSON); nested objects are compared leaf by leaf.
    An output that is not a JSON object scores 0.
    """

    name: str = "json"

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Per example the key/value F1."""
        _check_lengths(outputs, references)
        valid, kv_f1, key_f1, exact = [], [], [], []
        for output, reference in zip(outputs, references, strict=True):
            ref = parse_json_object(reference)
            if ref is None:
                raise GraderError(f"reference is not a JSON object: {reference[:80]!r}")
            pred = parse_json_object(output)
            valid.append(float(pred is not None))
            if pred is None:
                kv_f1.append(0.0)
                key_f1.append(0.0)
                exact.append(0.0)
                continue
            pred_pairs, ref_pairs = flatten_json(pred), flatten_json(ref)
            kv_f1.append(set_f1(pred_pairs, ref_pairs))
            key_f1.append(set_f1({k for k, _ in pred_pairs}, {k for k, _ in ref_pairs}))
            exact.append(float(pred == ref))
        metrics = {
            "key_value_f1": _mean(kv_f1),
            "json_valid": _mean(valid),
            "key_f1": _mean(key_f1),
            "json_exact_match": _mean(exact),
        }
        return GradeResult(self.name, "key_value_f1", metrics, kv_f1)


# --------------------------------------------------------------------------- text similarity


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-4 (one reference per hypothesis) in [0, 1], with the brevity penalty.

    Clipped n-gram counts are summed over the corpus. Smoothing (Lin & Och 2004, add-one): for
    n ≥ 2 the precision is (matches + 1) / (candidates + 1); the unigram precision is not smoothed,
    so a corpus without a single matching word scores 0. Brevity penalty exp(1 - r/c) when c < r.
    """
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = tokenize(hyp), tokenize(ref)
        hyp_len += len(h)
        ref_len += len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_precision = math.log(matches[0] / totals[0])
    for n in range(1, max_n):
        log_precision += math.log((matches[n] + 1) / (totals[n] + 1))
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision / max_n)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """BLEU-4 of one hypothesis (``corpus_bleu`` of a one-pair corpus)."""
    return corpus_bleu([hypothesis], [reference])


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1: LCS of lower-cased word tokens, precision over the hypothesis, recall over the reference."""
    h, r = re.findall(r"\w+", hypothesis.lower()), re.findall(r"\w+", reference.lower())
    if not h and not r:
        return 1.0
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def fuzzy_match(hypothesis: str, reference: str) -> float:
    """Character similarity ratio 2·M/T of ``difflib.SequenceMatcher`` (1 for identical strings)."""
    if not hypothesis and not reference:
        return 1.0
    return difflib.SequenceMatcher(None, hypothesis, reference, autojunk=False).ratio()


@dataclass
class TextSimilarityGrader:
    """OpenAI's ``text_similarity``: BLEU (corpus), ROUGE-L and fuzzy match (means over examples).

    ``evaluation_metric`` chooses the per-example score; all three metrics are always reported.
    """

    evaluation_metric: SimilarityMetric = "rouge_l"
    name: str = "text_similarity"

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Per example the chosen metric (sentence BLEU for ``bleu``)."""
        _check_lengths(outputs, references)
        outs, refs = [o.strip() for o in outputs], [r.strip() for r in references]
        per_example = {
            "bleu": [sentence_bleu(o, r) for o, r in zip(outs, refs, strict=True)],
            "rouge_l": [rouge_l(o, r) for o, r in zip(outs, refs, strict=True)],
            "fuzzy_match": [fuzzy_match(o, r) for o, r in zip(outs, refs, strict=True)],
        }
        if self.evaluation_metric not in per_example:
            raise GraderError(f"unknown text_similarity metric '{self.evaluation_metric}' (bleu, rouge_l, fuzzy_match)")
        metrics = {
            "bleu": corpus_bleu(outs, refs),
            "rouge_l": _mean(per_example["rouge_l"]),
            "fuzzy_match": _mean(per_example["fuzzy_match"]),
        }
        primary = self.evaluation_metric
        return GradeResult(self.name, primary, metrics, per_example[primary])


# --------------------------------------------------------------------------- selection


def detect_task(
    references: Sequence[str], train_answers: Sequence[str] = ()
) -> Literal["tools", "json", "classification", "text"]:
    """The kind of task the references imply: ``tools``, ``json``, ``classification`` or ``text``.

    References that call a tool (in the default call format, ``data/tools.py``) make a tool task.

    A training file's answers, when given, count with the references towards a label set
    (:func:`is_label_set`), so six held-out examples of six intents still read as labels.
    """
    if any(TOOL_CALL_OPEN in r and parse_tool_calls(r)[1] for r in references):
        return "tools"
    if references and all(parse_json_object(r) is not None for r in references):
        return "json"
    if is_label_set([*references, *train_answers]):
        return "classification"
    return "text"


def select_graders(
    references: Sequence[str],
    grader: str = "auto",
    operation: StringOperation = "eq",
    train_answers: Sequence[str] = (),
    tool_check: Callable[[str, Any], bool] | None = None,
) -> list[Grader]:
    """The graders for a run; the first one's per-example scores are the run's primary scores.

    ``auto`` chooses from the references and training answers (:func:`detect_task`). ``judge``
    needs no reference grader and returns an empty list (the pairwise judge is run separately).
    ``tool_check`` validates a graded call's arguments against its function's schema.
    """
    from tuneloop.evals.tool_calls import ToolCallGrader  # it builds on this module's helpers

    if grader == "auto":
        task = detect_task(references, train_answers)
        if task == "tools":
            return [ToolCallGrader(tool_check)]
        if task == "json":
            return [JsonGrader()]
        if task == "classification":
            return [ClassificationGrader(sorted({r.strip() for r in references}))]
        return [TextSimilarityGrader(), ExactMatchGrader()]
    if grader == "string_check":
        return [StringCheckGrader(operation)]
    if grader == "exact":
        return [ExactMatchGrader()]
    if grader == "classification":
        return [ClassificationGrader(sorted({r.strip() for r in references}))]
    if grader == "json":
        return [JsonGrader()]
    if grader == "tools":
        return [ToolCallGrader(tool_check)]
    if grader == "text_similarity":
        return [TextSimilarityGrader(), ExactMatchGrader()]
    if grader == "judge":
        return []
    raise GraderError(f"unknown grader '{grader}'; choose one of: {', '.join(GRADER_NAMES)}")


# --------------------------------------------------------------------------- pairwise judge

JUDGE_SYSTEM = (
    "You are an impartial judge comparing two answers to the same conversation. Decide which answer "
    "follows the instructions and answers the final user message better; use the reference answer, "
    "when given, as the expected answer. Ignore the order of the answers and their length. "
    "Reply with exactly one verdict: [[A]] if answer A is better, [[B]] if answer B is better, "
    "[[C]] for a tie."
)
_VERDICT = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^\W*(A|B|TIE)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> Literal["A", "B", "tie"] | None:
    """The judge's verdict: ``[[A]]``/``[[B]]``/``[[C]]`` (or a reply starting with A, B or tie); None if unreadable."""
    match = _VERDICT.search(reply) or _BARE_VERDICT.search(reply)
    if not match:
        return None
    verdict = match.group(1).upper()
    return "A" if verdict == "A" else "B" if verdict == "B" else "tie"


def _transcript(messages: Sequence[dict]) -> str:
    lines = []
    for m in messages:
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        lines.append(f"{m.get('role', 'user')}: {text}")
    return "\n".join(lines)


@dataclass
class Verdict:
    """The judge's decision on one example, from the first candidate's point of view."""

    outcome: Literal["win", "loss", "tie"]
    #: True when the first candidate was shown as answer B.
    swapped: bool
    #: False when the judge's reply could not be read (counted as a tie).
    parsed: bool
    reply: str | None


@dataclass
class PairwiseJudge:
    """Model-graded pairwise comparison through any chat endpoint.

    ``complete`` sends messages to the judge model and returns its reply. The two answers are shown
    in a random order (deterministic per ``seed`` and example index); identical answers are a tie
    without asking the judge.
    """

    complete: Callable[[list[dict]], str]
    seed: int = 0
    name: str = "judge"

    def judge_messages(self, prompt: Sequence[dict], reference: str | None, first: str, second: str) -> list[dict]:
        """The judge's request for answers shown as A = ``first`` and B = ``second``."""
        parts = [f"[Conversation]\n{_transcript(prompt)}"]
        if reference is not None:
            parts.append(f"[Reference answer]\n{reference}")
        parts += [f"[Answer A]\n{first}", f"[Answer B]\n{second}", "Verdict ([[A]], [[B]] or [[C]]):"]
        return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]

    def compare(
        self, index: int, prompt: Sequence[dict], reference: str | None, output_a: str, output_b: str
    ) -> Verdict:
        """Judge ``output_a`` against ``output_b`` for example ``index``."""
        swapped = random.Random(f"{self.seed}:{index}").random() < 0.5
        if output_a.strip() == output_b.strip():
            return Verdict("tie", swapped, True, None)
        first, second = (output_b, output_a) if swapped else (output_a, output_b)
        reply = self.complete(self.judge_messages(prompt, reference, first, second))
        verdict = parse_verdict(reply)
        if verdict is None or verdict == "tie":
            return Verdict("tie", swapped, verdict is not None, reply)
        a_won = (verdict == "A") != swapped
        return Verdict("win" if a_won else "loss", swapped, True, reply)


def judge_summary(verdicts: Sequence[Verdict]) -> tuple[dict[str, float], list[float]]:
    """Metrics of a run of verdicts (win rate counting ties as half) and per-example scores."""
    scores = [1.0 if v.outcome == "win" else 0.5 if v.outcome == "tie" else 0.0 for v in verdicts]
    n = len(verdicts)
    metrics = {
        "judge_score": _mean(scores),
        "judge_wins": float(sum(v.outcome == "win" for v in verdicts)),
        "judge_losses": float(sum(v.outcome == "loss" for v in verdicts)),
        "judge_ties": float(sum(v.outcome == "tie" for v in verdicts)),
        "judge_unparsed": float(sum(not v.parsed for v in verdicts)),
    }
    if not n:
        metrics["judge_score"] = 0.5
    return metrics, scores
