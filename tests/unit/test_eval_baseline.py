"""Label sets, invalid vs wrong labels, and the TF-IDF + logistic regression baseline (no server)."""

from __future__ import annotations

import json
import time

import pytest

from tuneloop.evals import baseline as classical
from tuneloop.evals.graders import select_graders
from tuneloop.evals.labels import known_labels, label_outcomes, label_rates
from tuneloop.evals.report import build_report
from tuneloop.evals.report_html import render_html
from tuneloop.evals.report_terminal import print_report
from tuneloop.evals.runner import (
    Candidate,
    CandidateRun,
    EvalConfig,
    EvalItem,
    EvalRun,
    ExampleResult,
    classical_run,
)

TOPICS = {
    "weather": ["will it rain in {}", "is it sunny in {}", "forecast for {}", "how cold is it in {}"],
    "music": ["play some {} songs", "put on {} music", "I want to hear {} tunes", "start a {} playlist"],
    "shopping": ["add {} to my list", "we are out of {}", "buy {} tomorrow", "put {} on the shopping list"],
}
FILLERS = ["paris", "jazz", "milk", "oslo", "rock", "eggs"]


def _conversations() -> list[list[dict]]:
    convs = []
    for label, templates in TOPICS.items():
        for template in templates:
            for filler in FILLERS[:3]:
                convs.append(
                    [
                        {"role": "system", "content": "Route the request."},
                        {"role": "user", "content": template.format(filler)},
                        {"role": "assistant", "content": label},
                    ]
                )
    return convs


# --------------------------------------------------------------------------- the label-set rule


def test_known_labels_rule():
    clinc = [f"intent_{i % 150}" for i in range(600)]
    assert known_labels(clinc) == sorted(set(clinc)) and len(known_labels(clinc)) == 150
    # six held-out examples of six intents: only the training answers make them a label set
    six = ["lights_on", "lights_off", "weather", "play_music", "add_to_list", "set_temperature"]
    assert known_labels(six) is None
    assert known_labels(six, six * 4 + ["timer"]) == sorted([*six, "timer"])
    assert known_labels(["The capital of France is Paris.", "Berlin is in Germany.", "Rome."]) is None
    assert known_labels(["a long free-text answer, once", "another one", "x\ny", "x\ny"]) is None
    assert known_labels(['{"a": 1}', '{"a": 1}', '{"b": 2}']) is None  # JSON is never a label set


# --------------------------------------------------------------------------- invalid vs wrong


def test_invalid_and_wrong_labels():
    references = ["yes", "yes", "yes", "no", "no"]
    labels = known_labels(references, ["maybe", "yes"])
    assert labels == ["maybe", "no", "yes"]
    outputs = ["Yes.", "no", "maybe", "banana", "The answer is no"]
    outcomes = label_outcomes(outputs, references, labels)
    # "maybe" is a known label (from training) that is not the reference: wrong, not invalid
    assert outcomes == ["correct", "wrong", "wrong", "invalid", "correct"]
    assert label_rates(outcomes) == {"invalid_label_rate": 0.2, "wrong_label_rate": 0.4}
    accuracy = select_graders(references)[0].grade(outputs, references).metrics["accuracy"]
    assert accuracy + sum(label_rates(outcomes).values()) == pytest.approx(1.0)  # one bucket per answer


# --------------------------------------------------------------------------- the classifier


def test_training_pairs_take_the_last_user_and_assistant_messages():
    convs = [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "b"}]
        + [{"role": "assistant", "content": [{"type": "text", "text": " y "}]}],
        [{"role": "user", "content": "no answer"}],
    ]
    assert classical.training_pairs(convs) == (["b"], ["y"])


def test_tfidf_classifier_learns_a_separable_task():
    pytest.importorskip("sklearn")
    texts, labels = classical.training_pairs(_conversations())
    classifier = classical.TfidfClassifier().fit(texts, labels)
    unseen = ["will it rain in lima", "put on reggae music", "we are out of bread", "forecast for tokyo"]
    assert classifier.predict(unseen) == ["weather", "music", "shopping", "weather"]
    answers, latencies, fit_s = classical.fit_predict(texts, labels, unseen)
    assert answers == ["weather", "music", "shopping", "weather"]
    assert len(latencies) == 4 and all(t > 0 for t in latencies) and fit_s > 0


def test_one_label_is_predicted_as_a_constant():
    assert classical.TfidfClassifier().fit(["a", "b"], ["yes", "yes"]).predict(["c"]) == ["yes"]
    with pytest.raises(ValueError):
        classical.TfidfClassifier().fit([], [])


# --------------------------------------------------------------------------- in the run and the report


def _items() -> list[EvalItem]:
    questions = [("will it rain in lima", "weather"), ("play some reggae songs", "music")]
    questions += [("buy bread tomorrow", "shopping"), ("is it sunny in rome", "weather")]
    return [
        EvalItem(i, i + 1, [{"role": "system", "content": "Route."}, {"role": "user", "content": q}], ref)
        for i, (q, ref) in enumerate(questions)
    ]


def test_classical_run_and_missing_scikit_learn(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    items, pool = _items(), _conversations()
    config = EvalConfig(data=tmp_path / "held.jsonl", train=tmp_path / "train.jsonl", candidates=[], progress=False)
    labels = known_labels([it.reference for it in items], classical.training_pairs(pool)[1])
    run, note = classical_run(config, items, pool, labels)
    assert note is None and run is not None and run.candidate.name == classical.NAME
    assert [r.output for r in run.results] == ["weather", "music", "shopping", "weather"]
    assert all(r.prompt_tokens is None and r.latency_s > 0 for r in run.results)
    assert classical_run(config, items, pool, None) == (None, None)  # not a label set
    assert classical_run(config, items, None, labels) == (None, None)  # no training file
    config.classical_baseline = False
    assert classical_run(config, items, pool, labels) == (None, None)
    config.classical_baseline = True
    monkeypatch.setattr(classical, "available", lambda: False)
    assert classical_run(config, items, pool, labels) == (None, classical.MISSING_NOTE)


def test_report_shows_the_baseline_and_invalid_vs_wrong(tmp_path):
    from rich.console import Console

    items = _items()
    references = [it.reference for it in items]
    labels = known_labels(references, ["weather", "music", "shopping", "timer"])
    grader = select_graders(references, train_answers=labels)[0]
    cands = [Candidate("few", "base", few_shot=2), Candidate(classical.NAME, classical.MODEL, base_url="in-process")]
    outputs = {"few": ["weather", "timer", "sure!", "weather"], classical.NAME: ["weather", "music", "weather", "x"]}
    runs = []
    for c in cands:
        local = c.base_url == "in-process"
        results = [
            ExampleResult(i, o, 0.001 if local else 0.5, None if local else 40, None if local else 2)
            for i, o in enumerate(outputs[c.name])
        ]
        run = CandidateRun(c, results, [grader.grade(outputs[c.name], references)])
        run.label_outcomes = label_outcomes(outputs[c.name], references, labels)
        runs.append(run)
    config = EvalConfig(data=tmp_path / "held.jsonl", candidates=cands[:1], progress=False)
    run = EvalRun(config, items, runs, "few", "classification", time.time(), 1.0, labels, ["note: hello"])
    report = build_report(run)
    few, local = report.candidate("few"), report.candidate(classical.NAME)
    assert few.metrics["invalid_label_rate"] == 0.25 and few.metrics["wrong_label_rate"] == 0.25
    assert local.metrics["invalid_label_rate"] == 0.25 and local.metrics["wrong_label_rate"] == 0.25
    assert local.mean_prompt_tokens is None and local.mean_latency_s == pytest.approx(0.001)
    data = json.loads(report.to_json())
    assert data["labels"] == labels and data["notes"][0] == "note: hello"
    assert data["notes"][1].startswith("few trails the tf-idf + logistic regression baseline by")
    assert [o["label"] for o in data["items"][2]["outputs"].values()] == ["invalid", "wrong"]

    console = Console(record=True, width=250)
    print_report(report, console)
    text = console.export_text()
    header = next(line for line in text.splitlines() if "candidate" in line)
    assert "invalid" in header and "wrong" in header and "no_label_rate" not in header
    assert classical.NAME in text and "note: hello" in text
    page = render_html(report)
    assert "<th>invalid</th><th>wrong</th>" in page and classical.NAME in page and "4 known labels" in page


def test_verdicts_say_whether_each_candidate_beats_the_baseline():
    from tuneloop.evals.report import CandidateSummary, baseline_verdicts

    def summary(name: str, model: str, primary: float) -> CandidateSummary:
        return CandidateSummary(name, model, "", None, 0, {}, primary, None, None, None, None, 0)

    lines = baseline_verdicts(
        [
            summary("base", "smollm2", 0.03),
            summary("tuned", "ft:smollm2:x", 0.80),
            summary("weak", "ft:smollm2:y", 0.60),
            summary(classical.NAME, classical.MODEL, 0.695),
        ],
        "accuracy",
    )
    assert lines[0] == f"base trails the {classical.NAME} baseline by 66.5 points of accuracy"
    assert lines[1] == f"tuned beats the {classical.NAME} baseline by 10.5 points of accuracy"
    assert lines[2].startswith("warning: the fine-tuned weak does not beat") and "9.5 points" in lines[2]
    assert baseline_verdicts([summary("base", "m", 0.5)], "accuracy") == []  # no baseline: nothing to say


def test_cli_help_mentions_the_baseline():
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--no-tfidf" in result.output
