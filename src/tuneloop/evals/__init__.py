"""Step 3 of the loop: compare base (zero- and few-shot) and fine-tuned models on held-out data.

``run_eval(EvalConfig(...))`` asks every candidate every held-out question through an
OpenAI-compatible endpoint; ``build_report`` summarises quality, cost and speed against the
few-shot baseline; the report prints as a table and is written as JSON and as an HTML page.
"""

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
from tuneloop.evals.report import (
    EvalReport,
    build_report,
    print_report,
    read_metrics_csv,
    render_html,
    write_html,
    write_json,
)
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
    "build_report",
    "detect_task",
    "print_report",
    "read_metrics_csv",
    "render_html",
    "run_eval",
    "select_graders",
    "write_html",
    "write_json",
]
