"""Graders, grader auto-selection, few-shot selection and report figures, on hand-made cases."""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path

import pytest

from tuneloop.evals.fewshot import FewShotPrompter, estimate_tokens
from tuneloop.evals.graders import (
    NO_LABEL,
    ClassificationGrader,
    ExactMatchGrader,
    GraderError,
    JsonGrader,
    PairwiseJudge,
    StringCheckGrader,
    TextSimilarityGrader,
    corpus_bleu,
    detect_task,
    flatten_json,
    fuzzy_match,
    is_label_set,
    judge_summary,
    lcs_length,
    normalize_text,
    parse_json_object,
    parse_verdict,
    predict_label,
    rouge_l,
    select_graders,
    sentence_bleu,
    string_check,
)
from tuneloop.evals.report import build_report, parse_metrics_csv, ratio
from tuneloop.evals.report_html import render_html
from tuneloop.evals.report_terminal import print_report
from tuneloop.evals.runner import Candidate, CandidateRun, EvalConfig, EvalItem, EvalRun, ExampleResult, choose_baseline

# --------------------------------------------------------------------------- string_check / exact


@pytest.mark.parametrize(
    ("output", "reference", "operation", "expected"),
    [
        ("Paris", "Paris", "eq", True),
        ("paris", "Paris", "eq", False),
        ("paris", "Paris", "ne", True),
        ("It is Paris.", "Paris", "like", True),
        ("It is paris.", "Paris", "like", False),
        ("It is PARIS.", "Paris", "ilike", True),
        ("Berlin", "Paris", "ilike", False),
    ],
)
def test_string_check(output, reference, operation, expected):
    assert string_check(output, reference, operation) is expected


def test_string_check_grader_pass_rate_and_bad_operation():
    result = StringCheckGrader("ilike").grade(["yes!", " YES ", "no", "maybe"], ["yes", "yes", "yes", "no"])
    assert result.scores == [1.0, 1.0, 0.0, 0.0]
    assert result.metrics == {"string_check": 0.5}
    with pytest.raises(GraderError):
        string_check("a", "a", "glob")  # type: ignore[arg-type]
    with pytest.raises(GraderError):
        StringCheckGrader().grade(["a"], ["a", "b"])


def test_normalised_exact_match():
    assert normalize_text("  The Answer: Paris!  ") == "answer paris"
    result = ExactMatchGrader().grade(
        ["the Eiffel tower.", "Paris", "Paris, France"], ["Eiffel Tower", "paris", "Paris"]
    )
    assert result.scores == [1.0, 1.0, 0.0]
    assert result.metrics["exact_match"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- classification


def test_predict_label():
    labels = ["AddToPlaylist", "PlayMusic", "spam", "not spam"]
    assert predict_label(" playmusic. ", labels) == "PlayMusic"
    assert predict_label("I think PlayMusic, not AddToPlaylist", labels) == "PlayMusic"
    assert predict_label("Label: AddToPlaylist", labels) == "AddToPlaylist"
    assert predict_label("this is not spam", labels) == "not spam"  # longer label at the same position
    assert predict_label("PlayMusicX", labels) == NO_LABEL  # whole words only
    assert predict_label("no idea", labels) == NO_LABEL


def test_classification_metrics_exact_numbers():
    result = ClassificationGrader(["a", "b"]).grade(["a", "b", "b", "xyz"], ["a", "a", "b", "b"])
    # a: tp1 fp0 fn1 -> P 1, R .5, F1 2/3; b: tp1 fp1 fn1 -> F1 .5; macro = 7/12
    assert result.metrics["accuracy"] == 0.5
    assert result.metrics["macro_f1"] == pytest.approx(7 / 12)
    assert result.metrics["no_label_rate"] == 0.25
    assert result.scores == [1.0, 0.0, 1.0, 0.0]
    assert result.details["per_label"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert result.details["confusion"] == {"a": {"a": 1, "b": 1}, "b": {"b": 1, NO_LABEL: 1}}
    assert result.details["top_confusions"] == [
        {"reference": "a", "predicted": "b", "count": 1},
        {"reference": "b", "predicted": NO_LABEL, "count": 1},
    ]


def test_classification_strict_accuracy_counts_only_bare_labels():
    result = ClassificationGrader().grade(["yes", "The answer is yes", "No."], ["yes", "yes", "no"])
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["strict_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        (["yes", "no", "yes", "no"], True),
        (["PlayMusic", "GetWeather", "PlayMusic"], True),  # GetWeather once, but short without spaces
        (["positive review", "negative review", "positive review"], False),  # a once-seen label with a space
        (["positive review", "negative review", "positive review", "negative review"], True),
        (["Paris", "Berlin", "Rome"], False),  # nothing repeats
        ([f"label{i}" for i in range(21)] + ["label0"], False),  # over 20 labels, under 2 examples each
        ([f"label{i}" for i in range(21)] * 2, True),  # over 20 labels, 2 examples each
        ([f"intent_{i}" for i in range(150)] * 4, True),  # CLINC150: 150 intents in 600 examples
        ([f"intent_{i}" for i in range(150)] * 3 + ["x y"], False),  # a once-seen label with a space
        (["the answer is " + "x" * 60] * 4, False),  # too long for a label
        (["yes", "yes", "a\nb", "a\nb"], False),
    ],
)
def test_is_label_set(references, expected):
    assert is_label_set(references) is expected


# --------------------------------------------------------------------------- JSON


def test_json_parsing_and_flattening():
    assert parse_json_object(' ```json\n{"a": 1}\n``` ') == {"a": 1}
    assert parse_json_object("[1, 2]") is None
    assert parse_json_object("Sure! {") is None
    assert flatten_json({"a": {"b": 1, "c": [1, "x"]}, "d": "e"}) == {("a.b", "1"), ("a.c", '[1, "x"]'), ("d", '"e"')}


def test_json_grader_exact_numbers():
    outputs = ['{"a": 1, "b": 2}', "not json", '```json\n{"x": {"y": [1, 2]}}\n```', "{}"]
    references = ['{"a": 1, "b": 3}', "{}", '{"x": {"y": [1, 2]}}', "{}"]
    result = JsonGrader().grade(outputs, references)
    # kv F1: .5 (one of two pairs), 0 (invalid), 1, 1 (both empty)
    assert result.scores == [0.5, 0.0, 1.0, 1.0]
    assert result.metrics == {
        "key_value_f1": pytest.approx(2.5 / 4),
        "json_valid": 0.75,
        "key_f1": 0.75,
        "json_exact_match": 0.5,
    }
    with pytest.raises(GraderError):
        JsonGrader().grade(["{}"], ["plain text"])


# --------------------------------------------------------------------------- text similarity


def test_bleu_exact_numbers():
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert sentence_bleu("dogs bark", "the cat sat") == 0.0
    # 1-grams 5/5; 2-grams 3/4 -> 4/5; 3-grams 2/3 -> 3/4; 4-grams 1/2 -> 2/3; BP exp(1 - 6/5)
    expected = math.exp(1 - 6 / 5) * (1 * 0.8 * 0.75 * (2 / 3)) ** 0.25
    assert sentence_bleu("the cat sat on mat", "the cat sat on the mat") == pytest.approx(expected)
    # corpus counts are pooled: 1-grams 4/6, 2-grams (3+1)/(4+1), 3-grams 3/3, 4-grams 2/2, no brevity penalty
    corpus = corpus_bleu(["a b c d", "x y"], ["a b c d", "p q"])
    assert corpus == pytest.approx((4 / 6 * 0.8) ** 0.25)


def test_rouge_l_and_fuzzy_exact_numbers():
    assert lcs_length("abcbdab", "bdcaba") == 4
    assert rouge_l("the cat sat on mat", "The cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "y") == 0.0
    assert fuzzy_match("abcd", "abce") == pytest.approx(0.75)
    assert fuzzy_match("same", "same") == 1.0


def test_text_similarity_grader():
    result = TextSimilarityGrader().grade(["the cat sat on mat", "hello"], ["the cat sat on the mat", "hello"])
    assert result.primary == "rouge_l"
    assert result.scores == [pytest.approx(10 / 11), 1.0]
    assert result.metrics["rouge_l"] == pytest.approx((10 / 11 + 1) / 2)
    assert result.metrics["fuzzy_match"] == pytest.approx(
        (fuzzy_match("the cat sat on mat", "the cat sat on the mat") + 1) / 2
    )
    assert result.metrics["bleu"] == pytest.approx(
        corpus_bleu(["the cat sat on mat", "hello"], ["the cat sat on the mat", "hello"])
    )
    assert TextSimilarityGrader("fuzzy_match").grade(["abcd"], ["abce"]).scores == [pytest.approx(0.75)]


# --------------------------------------------------------------------------- selection


def test_auto_selection():
    assert detect_task(['{"a": 1}', '{"b": "x"}']) == "json"
    assert detect_task(["yes", "no", "yes"]) == "classification"
    assert detect_task(["The capital of France is Paris.", "Berlin is in Germany."]) == "text"
    # six held-out examples of six intents: labels once the training answers count too
    assert detect_task(["on", "off", "up"]) == "text"
    assert detect_task(["on", "off", "up"], ["on", "off", "up", "down"]) == "classification"
    assert detect_task(['{"a": 1}', '{"a": 1}'], ["x", "x"]) == "json"
    assert [g.name for g in select_graders(["yes", "no", "no"])] == ["classification"]
    assert select_graders(["yes", "no", "no"])[0].labels == ["no", "yes"]
    assert [g.name for g in select_graders(['{"a": 1}'])] == ["json"]
    assert [g.name for g in select_graders(["one long answer", "another"])] == ["text_similarity", "exact"]
    assert [g.name for g in select_graders(["yes", "no", "no"], "string_check", "like")] == ["string_check"]
    assert select_graders(["x"], "judge") == []
    with pytest.raises(GraderError):
        select_graders(["x"], "rouge")


# --------------------------------------------------------------------------- judge


def test_parse_verdict():
    assert parse_verdict("After thinking: [[B]]") == "B"
    assert parse_verdict("[[c]]") == "tie"
    assert parse_verdict("A. Answer A is better") == "A"
    assert parse_verdict("tie") == "tie"
    assert parse_verdict("I cannot decide") is None


def test_pairwise_judge_randomises_order_and_maps_back():
    calls = []

    def prefer_good(messages):
        text = messages[-1]["content"]
        calls.append(text)
        a = text.split("[Answer A]\n", 1)[1].split("\n\n", 1)[0]
        return "[[A]]" if "good" in a else "[[B]]"

    judge = PairwiseJudge(prefer_good, seed=3)
    prompt = [{"role": "user", "content": "q"}]
    verdicts = [judge.compare(i, prompt, "ref", "good answer", "bad answer") for i in range(20)]
    assert all(v.outcome == "win" for v in verdicts)
    assert {v.swapped for v in verdicts} == {True, False}  # both orders were shown
    assert [v.swapped for v in verdicts] == [judge.compare(i, prompt, "ref", "good", "bad").swapped for i in range(20)]
    assert all(judge.compare(i, prompt, None, "bad answer", "good answer").outcome == "loss" for i in range(20))
    n = len(calls)
    tie = judge.compare(0, prompt, None, "same ", "same")
    assert tie.outcome == "tie" and len(calls) == n  # identical answers: no judge call
    assert "[Reference answer]\nref" in calls[0]


def test_pairwise_judge_unreadable_reply_is_a_tie():
    verdict = PairwiseJudge(lambda m: "hmm", seed=0).compare(0, [], None, "x", "y")
    assert (verdict.outcome, verdict.parsed) == ("tie", False)
    metrics, scores = judge_summary([verdict, PairwiseJudge(lambda m: "[[A]]").compare(1, [], None, "x", "y")])
    assert metrics["judge_ties"] + metrics["judge_wins"] + metrics["judge_losses"] == 2
    assert metrics["judge_unparsed"] == 1
    assert sorted(scores) in ([0.0, 0.5], [0.5, 1.0])


# --------------------------------------------------------------------------- few-shot


def _conv(i: int, system: str | None = "Be brief.") -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]


def test_fewshot_k_builds_system_shots_question_and_skips_identical():
    training = [_conv(i) for i in range(10)]
    prompter = FewShotPrompter(training, k=3, seed=1)
    order = [s.messages[0]["content"] for s in prompter.shots]
    assert sorted(order) == sorted(f"question {i}" for i in range(10))
    held_out = [{"role": "system", "content": "Held-out system."}, {"role": "user", "content": order[1]}]
    messages, n = prompter.build(held_out)
    assert n == 3
    assert messages[0] == {"role": "system", "content": "Held-out system."}
    assert messages[-1] == held_out[-1]
    asked = [m["content"] for m in messages[1:-1] if m["role"] == "user"]
    assert asked == [order[0], order[2], order[3]]  # the identical question is skipped
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * 3
    # deterministic by seed
    assert [s.key for s in FewShotPrompter(training, k=3, seed=1).shots] == [s.key for s in prompter.shots]
    assert [s.key for s in FewShotPrompter(training, k=3, seed=2).shots] != [s.key for s in prompter.shots]


def test_fewshot_budget_fills_tokens():
    training = [_conv(i, system=None) for i in range(10)]
    # each shot: "question i" (10 chars -> 3 tokens) + "answer i" (8 chars -> 2 tokens) + 2 * 4 overhead = 13
    assert estimate_tokens("question 1") == 3 and estimate_tokens("answer 1") == 2
    prompter = FewShotPrompter(training, token_budget=40)
    assert all(s.tokens == 13 for s in prompter.shots)
    _, n = prompter.build([{"role": "user", "content": "new question"}])
    assert n == 3  # 39 <= 40 < 52
    _, n = FewShotPrompter(training, token_budget=40, count_tokens=lambda s: 1).build(
        [{"role": "user", "content": "x"}]
    )
    assert n == 4  # 10 tokens a shot
    assert FewShotPrompter(training, k=50).build([{"role": "user", "content": "x"}])[1] == 10


def test_fewshot_skips_unusable_training_examples():
    tool = [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]
    no_answer = [{"role": "user", "content": "q"}]
    prompter = FewShotPrompter([tool, no_answer, _conv(1)], k=5)
    assert len(prompter.shots) == 1


# --------------------------------------------------------------------------- report


def _run(tmp_path: Path) -> EvalRun:
    items = [EvalItem(i, i + 1, [{"role": "user", "content": f"q{i}"}], ref) for i, ref in enumerate(["yes", "no"] * 2)]
    references = [it.reference for it in items]
    cands = [
        Candidate("zero", "base"),
        Candidate("few", "base", few_shot=2),
        Candidate("tuned", "ft:base:x"),
    ]
    outputs = {
        "zero": ["yes", "yes", "yes", "yes"],
        "few": ["yes", "no", "no", "yes"],
        "tuned": ["yes", "no", "yes", "no"],
    }
    prompt_tokens = {"zero": 10, "few": 40, "tuned": 10}
    latency = {"zero": 0.5, "few": 1.0, "tuned": 0.25}
    grader = select_graders(references)[0]
    runs = []
    for c in cands:
        results = [
            ExampleResult(i, o, latency[c.name], prompt_tokens[c.name], 2, shots=2 if c.few_shot else 0)
            for i, o in enumerate(outputs[c.name])
        ]
        runs.append(CandidateRun(c, results, [grader.grade(outputs[c.name], references)]))
    config = EvalConfig(data=tmp_path / "held.jsonl", candidates=cands, progress=False)
    return EvalRun(config, items, runs, choose_baseline(cands), "classification", time.time(), 1.5)


def test_report_ratios_against_fewshot_baseline(tmp_path):
    report = build_report(_run(tmp_path))
    assert report.baseline == "few" and report.primary_metric == "accuracy"
    few, zero, tuned = report.candidate("few"), report.candidate("zero"), report.candidate("tuned")
    assert (zero.primary, few.primary, tuned.primary) == (0.5, 0.5, 1.0)
    assert few.ratios == {k: 1.0 for k in few.ratios}
    assert tuned.ratios["accuracy"] == 2.0
    assert tuned.ratios["mean_prompt_tokens"] == 0.25
    assert tuned.ratios["mean_latency_s"] == 0.25
    assert tuned.tokens_per_second == 8.0 and few.tokens_per_second == 2.0
    assert tuned.ratios["tokens_per_second"] == 4.0
    assert zero.mean_shots == 0 and few.mean_shots == 2
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None
    # every example has differing scores; widest spread first, then by index
    assert [d["index"] for d in report.disagreements] == [1, 2, 3]
    data = json.loads(report.to_json())
    assert data["object"] == "tuneloop.eval_report"
    assert data["candidates"][2]["details"]["confusion"] == {"yes": {"yes": 2}, "no": {"no": 2}}


def test_report_terminal_and_html(tmp_path):
    from rich.console import Console

    report = build_report(_run(tmp_path))
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "accuracy" in text and "(×2.00)" in text and "disagree" in text
    curve = parse_metrics_csv("step,train_loss,valid_loss\n1,2.0,\n2,1.5,1.7\n3,1.0,\n", "job")
    assert curve == {"label": "job", "step": [1, 2, 3], "train_loss": [2.0, 1.5, 1.0], "valid_loss": [None, 1.7, None]}
    encoded = base64.b64encode(b"step,train_loss\n1,3.0\n").decode()
    assert parse_metrics_csv(encoded, "b64")["train_loss"] == [3.0]
    with pytest.raises(ValueError):
        parse_metrics_csv("a,b\n1,2\n", "bad")
    page = render_html(report, [curve])
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="bar-chart"') == 5
    assert page.count('class="line-chart"') == 1 and "<polyline" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_report_with_judge_only(tmp_path):
    run = _run(tmp_path)
    judge = PairwiseJudge(lambda m: "[[A]]" if "[Answer A]\nno" in m[-1]["content"] else "[[B]]", seed=0)
    base = next(r for r in run.runs if r.candidate.name == run.baseline)
    for r in run.runs:
        r.grades = []
        r.verdicts = [
            judge.compare(it.index, it.prompt, it.reference, r.results[it.index].output, base.results[it.index].output)
            for it in run.items
        ]
    report = build_report(run)
    assert report.primary_metric == "judge_score" and report.graders == ["judge"]
    tuned, zero, few = report.candidate("tuned"), report.candidate("zero"), report.candidate("few")
    # the judge prefers "no": tuned vs few differ on items 2 (yes vs no) and 3 (no vs yes) -> 1 loss, 1 win, 2 ties
    assert tuned.judge == {"wins": 1, "losses": 1, "ties": 2, "unparsed": 0} and tuned.primary == 0.5
    # zero says "yes" everywhere; few says "no" on items 1 and 2 -> 2 losses, 2 ties
    assert zero.judge == {"wins": 0, "losses": 2, "ties": 2, "unparsed": 0} and zero.primary == 0.25
    assert few.primary == 0.5 and zero.ratios["judge_score"] == 0.5
