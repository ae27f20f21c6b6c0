"""Step 3 of the loop: compare base (zero- and few-shot) and fine-tuned models on held-out data.

``run_eval(EvalConfig(...))`` asks every candidate every held-out question through an
OpenAI-compatible endpoint; ``build_report`` summarises quality, cost and speed against the
few-shot baseline (``report``). On a label set, a TF-IDF + logistic regression classifier runs
in-process as one more candidate (``baseline``, needs ``tuneloop[eval]``) and answers naming no
known label count as invalid, apart from wrong labels (``labels``). The report prints as a table
(``report_terminal``) and is written as JSON and as an HTML page from a Jinja2 template
(``report_html``, ``templates/report.html.j2``).
"""

from tuneloop.evals.baseline import TfidfClassifier
from tuneloop.evals.fewshot import FewShotPrompter
from tuneloop.evals.graders import (
    ClassificationGrader,
    ExactMatchGrader,
    GradeResult,
    JsonGrader,
    PairwiseJudge,
    StringCheckGrader,
    TextSimilarityGrader,
    detect_task,
    select_graders,
)
from tuneloop.evals.labels import known_labels, label_outcomes
from tuneloop.evals.report import EvalReport, build_report, parse_metrics_csv, read_metrics_csv, write_json
from tuneloop.evals.report_html import render_html, write_html
from tuneloop.evals.report_terminal import print_report
from tuneloop.evals.runner import Candidate, EvalConfig, EvalRun, JudgeConfig, run_eval

__all__ = [
    "Candidate",
    "ClassificationGrader",
    "EvalConfig",
    "EvalReport",
    "EvalRun",
    "ExactMatchGrader",
    "FewShotPrompter",
    "GradeResult",
    "JsonGrader",
    "JudgeConfig",
    "PairwiseJudge",
    "StringCheckGrader",
    "TextSimilarityGrader",
    "TfidfClassifier",
    "build_report",
    "detect_task",
    "known_labels",
    "label_outcomes",
    "parse_metrics_csv",
    "print_report",
    "read_metrics_csv",
    "render_html",
    "run_eval",
    "select_graders",
    "write_html",
    "write_json",
]
