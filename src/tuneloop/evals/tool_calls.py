"""Grading tool calls: did the model call the right function with the right arguments, and only when it should.

Answers and references are compared in the default call format (``data/tools.py``): an answer's
text followed by its ``<tool_call>`` objects, which is how ``tuneloop eval`` writes both the
reference assistant message and the server's ``message.tool_calls``. Calls are compared as
multisets of (name, arguments), so the order of parallel calls does not matter.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.data.tools import ParsedCall, parse_tool_calls
from tuneloop.evals.graders import GraderError, GradeResult, flatten_json

#: Checks one call's arguments against its function's schema: (name, arguments) -> valid.
ArgumentsCheck = Callable[[str, Any], bool]


def has_tool_calls(text: str) -> bool:
    """Whether an answer (in the default format) calls a tool."""
    return bool(parse_tool_calls(text)[1])


@dataclass(frozen=True)
class Call:
    name: str
    #: The parsed arguments (None when they are not valid JSON).
    arguments: Any

    @property
    def key(self) -> tuple[str, str]:
        return self.name, json.dumps(self.arguments, sort_keys=True, ensure_ascii=False)


def _calls(parsed: Sequence[ParsedCall]) -> list[Call]:
    out = []
    for c in parsed:
        try:
            arguments = json.loads(c.arguments) if c.arguments.strip() else {}
        except json.JSONDecodeError:
            arguments = None
        out.append(Call(c.name, arguments))
    return out


def _pair_by_name(predicted: list[Call], reference: list[Call]) -> list[tuple[Call, Call]]:
    """Reference calls paired with predicted calls of the same name, in order (each used once)."""
    left = list(predicted)
    pairs = []
    for ref in reference:
        match = next((p for p in left if p.name == ref.name), None)
        if match is not None:
            left.remove(match)
            pairs.append((match, ref))
    return pairs


def _pairs(arguments: Any) -> set[tuple[str, str]]:
    return flatten_json(arguments) if isinstance(arguments, dict) else set()


@dataclass
class ToolCallGrader:
    """Tool calls against reference calls; the primary score is an exact match of every call.

    Metrics: ``exact_call_match`` (same calls, names and arguments, or rightly no call),
    ``name_accuracy`` (the same functions called), ``arguments_exact`` (among answers that called the
    right functions, all arguments equal), ``arguments_f1`` (key/value F1 of the arguments, per
    example that should call), ``called_when_expected`` and ``no_call_when_expected`` (when some
    references answer without a call), ``valid_arguments`` (calls whose arguments are a JSON object
    and, with ``check``, satisfy their function's schema).
    """

    check: ArgumentsCheck | None = None
    name: str = "tools"

    def grade(self, outputs: Sequence[str], references: Sequence[str]) -> GradeResult:
        """Per example the exact call match."""
        if len(outputs) != len(references):
            raise GraderError(f"{len(outputs)} outputs for {len(references)} references")
        exact, names, args_exact, args_f1, called, quiet, valid = [], [], [], [], [], [], []
        for output, reference in zip(outputs, references, strict=True):
            predicted, expected = _calls(parse_tool_calls(output)[1]), _calls(parse_tool_calls(reference)[1])
            same_names = Counter(c.name for c in predicted) == Counter(c.name for c in expected)
            same_calls = Counter(c.key for c in predicted) == Counter(c.key for c in expected)
            exact.append(float(same_calls))
            names.append(float(same_names))
            valid += [float(self._valid(c)) for c in predicted]
            if not expected:
                quiet.append(float(not predicted))
                continue
            called.append(float(bool(predicted)))
            if same_names:
                args_exact.append(float(same_calls))
            pairs = _pair_by_name(predicted, expected)
            found = set().union(*(_pairs(p.arguments) for p in predicted)) if predicted else set()
            wanted = set().union(*(_pairs(r.arguments) for r in expected))
            shared = set().union(*(_pairs(p.arguments) & _pairs(r.arguments) for p, r in pairs)) if pairs else set()
            args_f1.append(_f1(len(shared), len(found), len(wanted)) if found or wanted else float(same_names))
        metrics = {"exact_call_match": _mean(exact), "name_accuracy": _mean(names)}
        if args_exact:
            metrics["arguments_exact"] = _mean(args_exact)
        if called:
            metrics["arguments_f1"] = _mean(args_f1)
            metrics["called_when_expected"] = _mean(called)
        if quiet:
            metrics["no_call_when_expected"] = _mean(quiet)
        if valid:
            metrics["valid_arguments"] = _mean(valid)
        return GradeResult(self.name, "exact_call_match", metrics, exact, {"calls": len(valid)})

    def _valid(self, call: Call) -> bool:
        if not isinstance(call.arguments, dict):
            return False
        return self.check is None or self.check(call.name, call.arguments)


def _f1(tp: int, n_predicted: int, n_reference: int) -> float:
    return 2 * tp / (n_predicted + n_reference) if n_predicted + n_reference else 1.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
