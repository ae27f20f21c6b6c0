"""``tuneloop eval`` end to end against the real server with the tiny model: library, CLI, HTML in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tuneloop.errors import TuneloopError
from tuneloop.evals import Candidate, EvalConfig, baseline, build_report, run_eval, write_html, write_json
from tuneloop.evals.runner import CandidateError, EndpointUnreachableError, JudgeConfig

from helpers import chat_jsonl, wait_for

SYSTEM = "Answer yes or no."
#: The TF-IDF + logistic regression row, present where scikit-learn is installed (tuneloop[eval]).
LOCAL = [baseline.NAME] if baseline.available() else []
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)


def heldout_jsonl(path: Path, n: int = 6) -> Path:
    """Questions answered alternately yes and no (a two-label classification task)."""
    with path.open("w") as f:
        for i in range(n):
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"held-out question {i}?"},
                {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-data")
    train = Path(chat_jsonl(root / "train.jsonl", 12, system=SYSTEM))
    heldout = heldout_jsonl(root / "heldout.jsonl")
    csv = root / "metrics.csv"
    csv.write_text("step,train_loss,valid_loss\n1,3.2,\n2,2.9,3.1\n3,2.5,\n4,2.1,2.6\n")
    return {"train": train, "heldout": heldout, "csv": csv, "root": root}


@pytest.fixture(scope="module")
def library_report(api_server, files):
    """One library run: zero-shot, few-shot with k=2, few-shot filling a small token budget."""
    config = EvalConfig(
        data=files["heldout"],
        train=files["train"],
        candidates=[
            Candidate("zero-shot", "tiny-llama"),
            Candidate("few-shot k=2", "tiny-llama", few_shot=2),
            Candidate("few-shot budget", "tiny-llama", few_shot="auto"),
        ],
        base_url=api_server.base_url,
        max_tokens=4,
        fewshot_budget=64,
        concurrency=3,
        progress=False,
    )
    run = run_eval(config)
    report = build_report(run)
    out = files["root"] / "report"
    write_json(out / "report.json", report)
    write_html(out / "report.html", report, [{"label": "demo", "step": [1, 2], "train_loss": [2.0, 1.0]}])
    return run, report, out


def test_library_end_to_end(library_report, tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneloop.data.render import ChatRenderer

    run, report, out = library_report
    assert report.task == "classification" and report.primary_metric == "accuracy"
    assert report.baseline == "few-shot k=2" and report.n_examples == 6

    data = json.loads((out / "report.json").read_text())
    assert set(data) >= {"candidates", "baseline", "primary_metric", "disagreements", "items", "graders", "config"}
    by_name = {c["name"]: c for c in data["candidates"]}
    assert list(by_name) == ["zero-shot", "few-shot k=2", "few-shot budget", *LOCAL]
    assert data["labels"] == ["no", "yes"]
    for c in by_name.values():
        assert set(c) >= {"metrics", "mean_prompt_tokens", "mean_completion_tokens", "mean_latency_s", "ratios"}
        assert set(c["metrics"]) >= {
            "accuracy",
            "macro_f1",
            "strict_accuracy",
            "invalid_label_rate",
            "wrong_label_rate",
        }
        assert 0 <= c["metrics"]["accuracy"] <= 1 and c["errors"] == 0 and c["mean_latency_s"] > 0
        rates = c["metrics"]["accuracy"] + c["metrics"]["invalid_label_rate"] + c["metrics"]["wrong_label_rate"]
        assert rates == pytest.approx(1.0)
        if c["name"] not in LOCAL:
            assert 1 <= c["mean_completion_tokens"] <= 4 and c["tokens_per_second"] > 0
    if LOCAL:  # trained in-process on the training file, whose answers are all "yes"
        local = by_name[baseline.NAME]
        assert local["mean_prompt_tokens"] is None and local["metrics"]["accuracy"] == 0.5
        assert local["metrics"]["invalid_label_rate"] == 0 and local["metrics"]["wrong_label_rate"] == 0.5
    assert by_name["few-shot k=2"]["ratios"]["mean_prompt_tokens"] == 1.0
    assert by_name["few-shot k=2"]["mean_shots"] == 2
    # budget 64 at ~13 tokens a shot -> 4 shots, more prompt tokens than k=2, more than zero-shot
    assert by_name["few-shot budget"]["mean_shots"] == 4
    assert (
        by_name["zero-shot"]["ratios"]["mean_prompt_tokens"]
        < 1
        < by_name["few-shot budget"]["ratios"]["mean_prompt_tokens"]
    )
    assert len(data["items"]) == 6 and data["items"][1]["reference"] == "no"

    # usage is read from the server: it matches the prompt rendered locally with the same template
    renderer = ChatRenderer(AutoTokenizer.from_pretrained(tiny_model_dir))
    zero = run.runs[0].results
    assert [r.prompt_tokens for r in zero] == [len(renderer.render_prompt(item.prompt)) for item in run.items]
    # few-shot prompts: the held-out system prompt, then 2 solved examples, then the question
    assert run.runs[1].results[0].prompt_tokens > zero[0].prompt_tokens

    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 6 and "<script" not in page
    assert "<th>invalid</th><th>wrong</th>" in page and all(name in page for name in LOCAL)


def test_cli_with_fine_tuned_job_and_judge(api_server, files, tmp_path):
    """The command: few-shot baseline, a real fine-tuned model from a job (its loss curve too), a judge."""
    from tuneloop.cli.eval import eval_command

    client = api_server.client()
    with open(files["train"], "rb") as f:
        training = client.files.create(file=f, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    job = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed", "cancelled") and j,
        timeout=120,
        what="fine-tuning job",
    )
    assert job.status == "succeeded", job.error

    app = typer.Typer()
    app.command("eval")(eval_command)
    out = tmp_path / "out"
    args = ["--data", str(files["heldout"]), "--base", "tiny-llama", "--train", str(files["train"]), "--k", "1"]
    args += ["--job", job.id, "--metrics-csv", str(files["csv"]), "--judge-model", "tiny-llama"]
    args += ["--base-url", api_server.base_url, "--limit", "3", "--max-tokens", "2", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "ratios (×) against" in result.output and "base few-shot (k=1)" in result.output
    assert job.fine_tuned_model in result.output and "invalid" in result.output
    assert all(name in result.output for name in LOCAL)

    data = json.loads((out / "report.json").read_text())
    names = [c["name"] for c in data["candidates"]]
    assert names == ["base zero-shot", "base few-shot (k=1)", job.fine_tuned_model, *LOCAL]
    assert all("invalid_label_rate" in c["metrics"] for c in data["candidates"])
    assert data["baseline"] == "base few-shot (k=1)" and data["graders"] == ["classification", "judge"]
    tuned = data["candidates"][2]
    assert tuned["judge"]["wins"] + tuned["judge"]["losses"] + tuned["judge"]["ties"] == 3
    assert 0 <= tuned["metrics"]["judge_score"] <= 1
    page = (out / "report.html").read_text()
    assert page.count('class="line-chart"') == 2  # the CSV's curve and the job's curve
    assert f"Loss: {job.fine_tuned_model}" in page
    # uploaded for the dashboard's Evals page: the same report, with its loss curves
    uploaded = [f for f in client.files.list(purpose="evals") if f"uploaded the report as {f.id}" in result.output]
    assert len(uploaded) == 1 and uploaded[0].filename.startswith("eval-")
    stored = json.loads(client.files.content(uploaded[0].id).text)
    assert stored["object"] == "tuneloop.eval_report" and stored["candidates"] == data["candidates"]
    assert [c["label"] for c in stored["curves"]] == [f"{files['csv'].parent.name}/metrics.csv", job.fine_tuned_model]


def test_cli_without_scikit_learn_notes_it_and_goes_on(api_server, files, tmp_path, monkeypatch):
    from tuneloop.cli.eval import eval_command

    monkeypatch.setattr(baseline, "available", lambda: False)
    app = typer.Typer()
    app.command("eval")(eval_command)
    args = ["--data", str(files["heldout"]), "--base", "tiny-llama", "--train", str(files["train"]), "--k", "1"]
    args += ["--base-url", api_server.base_url, "--limit", "2", "--max-tokens", "1", "--no-progress"]
    args += ["--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.count(baseline.MISSING_NOTE) == 1 and baseline.NAME not in result.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["notes"] == [baseline.MISSING_NOTE] and len(data["candidates"]) == 2


def test_student_against_its_teacher(api_server, files, tmp_path):
    """--teacher with its own long system prompt, --reference teacher: agreement with the teacher is the
    primary metric, the data's references are still graded, and the teacher's prompt tokens are shown."""
    from tuneloop.cli.eval import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    prompt = tmp_path / "teacher-prompt.json"
    shots = [{"role": "user", "content": "Is water wet?"}, {"role": "assistant", "content": "yes"}]
    prompt.write_text(json.dumps([{"role": "system", "content": "You answer with one word, yes or no. " * 20}, *shots]))
    args = ["--data", str(files["heldout"]), "--base", "tiny-llama", "--teacher", "tiny-llama",
            "--teacher-prompt-file", str(prompt), "--reference", "teacher", "--base-url", api_server.base_url,
            "--max-tokens", "2", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["primary_metric"] == "teacher_agreement" and data["graders"][0] == "teacher"
    teacher, student = data["candidates"][1], data["candidates"][0]
    assert teacher["name"] == "teacher: tiny-llama" and teacher["metrics"]["teacher_agreement"] == 1.0
    assert 0.0 <= student["metrics"]["teacher_agreement"] <= 1.0 and "accuracy" in student["metrics"]
    assert teacher["mean_prompt_tokens"] > 5 * student["mean_prompt_tokens"]
    assert "teacher_agreement" in result.output
    bad = CliRunner().invoke(app, ["--data", str(files["heldout"]), "--base", "x", "--reference", "teacher"])
    assert getattr(bad.exception, "exit_code", None) == 2
    assert "--reference teacher needs --teacher" in str(bad.exception)
    prompt.write_text('[{"role": "tool", "content": "x"}]')
    bad = CliRunner().invoke(app, [*args[:6], "--teacher-prompt-file", str(prompt), "--reference", "teacher"])
    assert getattr(bad.exception, "exit_code", None) == 2 and "message 0: expected" in str(bad.exception)


def test_unreachable_server_and_unknown_model(api_server, files):
    config = EvalConfig(
        data=files["heldout"],
        candidates=[Candidate("x", "tiny-llama")],
        base_url="http://127.0.0.1:9/v1",
        progress=False,
    )
    with pytest.raises(EndpointUnreachableError, match="cannot reach") as info:
        run_eval(config)
    assert info.value.exit_code == 2
    config.base_url = api_server.base_url
    config.candidates = [Candidate("ghost", "no-such-model")]  # a 404 stops the run (no per-example errors)
    with pytest.raises(CandidateError, match="no-such-model"):
        run_eval(config)
    config.candidates = [Candidate("few", "tiny-llama", few_shot=2)]
    with pytest.raises(TuneloopError, match="training file"):
        run_eval(config)
    config.candidates, config.grader = [Candidate("x", "tiny-llama")], "judge"
    with pytest.raises(TuneloopError, match="judge model"):
        run_eval(config)
    config.judge = JudgeConfig("tiny-llama")
    with pytest.raises(TuneloopError, match="at least two"):
        run_eval(config)


def test_a_rejected_example_is_recorded_and_the_run_goes_on(api_server, tmp_path):
    path = heldout_jsonl(tmp_path / "heldout.jsonl", n=3)
    long = {"messages": [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "yes"}]}
    with path.open("a") as f:
        f.write(json.dumps(long) + "\n")
    config = EvalConfig(
        data=path, candidates=[Candidate("x", "tiny-llama")], base_url=api_server.base_url, max_tokens=2, progress=False
    )
    report = build_report(run_eval(config))
    x = report.candidate("x")
    assert x.errors == 1 and report.n_examples == 4
    assert "context length" in report.items[3]["outputs"]["x"]["error"]
    assert report.items[3]["outputs"]["x"]["score"] == 0.0
    assert x.mean_prompt_tokens is not None and x.mean_prompt_tokens < 100  # errors excluded from the means


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium at /usr/bin/chromium")
def test_html_renders_in_headless_chromium(library_report, tmp_path):
    _, _, out = library_report
    page = (out / "report.html").resolve()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60
    ).stdout
    assert dom.count("<svg") == 6 and dom.count("<rect") >= 15 and "<polyline" in dom
    assert "few-shot budget" in dom and "invalid" in dom and all(name in dom for name in LOCAL)
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=60,
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    shutil.copy(shot, out / "report.png")
