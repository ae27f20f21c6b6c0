"""Label-aware answers: on a label set, an answer naming no known label (invalid) is not a wrong label.

The known labels are the held-out references together with the training file's answers. Each
answer is read the way the classification grader reads it (:func:`~tuneloop.evals.graders.predict_label`:
the whole answer equals a label up to case, surrounding punctuation and spaces, else the first label
it mentions as a whole word), and falls in exactly one bucket: correct (the reference, as the
grader's accuracy counts it), wrong (another known label) or invalid (no known label at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tuneloop.evals.graders import NO_LABEL, detect_task, predict_label

Outcome = Literal["correct", "wrong", "invalid"]


def known_labels(references: Sequence[str], train_answers: Sequence[str] = ()) -> list[str] | None:
    """The task's labels (distinct held-out references and training answers), None if they are not a label set."""
    if detect_task(references, train_answers) != "classification":
        return None
    return sorted({a.strip() for a in [*references, *train_answers]} - {""})


def label_outcomes(outputs: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> list[Outcome]:
    """Per answer: ``correct``, ``wrong`` (a known label, not the reference) or ``invalid`` (no known label)."""
    refs = [r.strip() for r in references]
    graded = sorted(set(refs))  # the labels the classification grader reads answers against
    outcomes: list[Outcome] = []
    for output, reference in zip(outputs, refs, strict=True):
        if predict_label(output, graded) == reference:
            outcomes.append("correct")
        elif predict_label(output, labels) == NO_LABEL:
            outcomes.append("invalid")
        else:
            outcomes.append("wrong")
    return outcomes


def label_rates(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """``invalid_label_rate`` and ``wrong_label_rate``: the share of answers in each bucket."""
    n = len(outcomes) or 1
    return {
        "invalid_label_rate": sum(o == "invalid" for o in outcomes) / n,
        "wrong_label_rate": sum(o == "wrong" for o in outcomes) / n,
    }
