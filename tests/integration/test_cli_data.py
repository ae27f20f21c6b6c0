"""`tuneloop data validate` end to end: JSON shape, human report, exit codes."""

from __future__ import annotations

import json

from helpers import run_cli

LINE = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
    ]
}


def write_file(tmp_path, extra: list[str] = ()) -> str:
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps(
            {**LINE, "messages": LINE["messages"][:1] + [{"role": "user", "content": f"q{i}"}, LINE["messages"][2]]}
        )
        for i in range(10)
    ]
    path.write_text("\n".join(lines + list(extra)) + "\n")
    return str(path)


def test_validate_json_output_and_exit_code(tmp_path, tiny_model):
    result = run_cli("data", "validate", write_file(tmp_path, ["{bad json"]), "--model", tiny_model, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert {"format", "n_examples", "n_errors", "errors", "warnings", "stats", "estimate"} <= set(report)
    assert report["n_errors"] == 1
    assert report["errors"] == [{"line": 11, "code": "invalid_json", "message": report["errors"][0]["message"]}]
    assert set(report["estimate"]) >= {"n_epochs", "trained_tokens", "seconds"}
    assert report["stats"]["limit"] == 1024  # the tiny model's context


def test_validate_clean_file_human_report(tmp_path, tiny_model):
    result = run_cli("data", "validate", write_file(tmp_path), "--model", tiny_model, "--max-tokens", "20")
    assert result.returncode == 0, result.stderr
    assert "No errors found" in result.stdout
    assert "total tokens" in result.stdout and "10 example(s) longer than 20 tokens" in result.stdout


def test_validate_cannot_run_exits_2(tmp_path, tiny_model):
    missing = run_cli("data", "validate", str(tmp_path / "nope.jsonl"), "--model", tiny_model)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unknown = run_cli("data", "validate", write_file(tmp_path), "--model", "nope")
    assert unknown.returncode == 2 and "smollm2-135m-instruct" in unknown.stderr
