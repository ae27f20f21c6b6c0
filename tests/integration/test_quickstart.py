"""The quick start end to end on the tiny model: every step runs and the report is written."""

from __future__ import annotations

import json

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
    assert names == ["base zero-shot", "base few-shot", "fine-tuned"]
    html = (workdir / "report" / "report.html").read_text()
    assert "<svg" in html and "fine-tuned" in html
