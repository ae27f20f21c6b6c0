"""The quick start end to end on the tiny model: every step runs and the report is written."""

from __future__ import annotations

import json

from tuneloop.evals import baseline

from helpers import run_cli


def test_quickstart_runs_the_whole_loop(tiny_model, tmp_path):
    workdir = tmp_path / "qs"
    result = run_cli(
        "quickstart", "--model", tiny_model, "--workdir", str(workdir), "--train-examples", "24",
        "--valid-examples", "6", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("1. Prepare", "2. Train", "3. Evaluate", "4. Use"):
        assert step in result.stdout
    report = json.loads((workdir / "report" / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    local = [baseline.NAME] if baseline.available() else []  # scikit-learn comes with tuneloop[eval]
    assert names == ["base zero-shot", "base few-shot", "fine-tuned", *local]
    # six held-out examples of six intents: a label set, since the training answers count too
    assert report["task"] == "classification" and len(report["labels"]) == 6
    assert all("invalid_label_rate" in c["metrics"] for c in report["candidates"])
    if local:  # the classifier only ever answers a training label
        assert report["candidates"][3]["metrics"]["invalid_label_rate"] == 0
    html = (workdir / "report" / "report.html").read_text()
    assert "<svg" in html and "fine-tuned" in html and "<th>invalid</th>" in html
    assert all(name in html for name in local)
