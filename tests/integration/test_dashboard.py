"""The dashboard in headless Chromium against the real server (tiny model, API key set), and its access rules.

Screenshots of every page go to ``$TUNELOOP_SCREENSHOTS`` when set (README's come from there:
``TUNELOOP_SCREENSHOTS=docs/screenshots pytest tests/integration/test_dashboard.py``), else to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import openai
import pytest

from helpers import ServerProcess, chat_jsonl

KEY = "dashboard-secret"
PAGES = ["/ui/jobs", "/ui/jobs/new", "/ui/files", "/ui/models", "/ui/playground", "/ui/evals", "/ui/jobs/ftjob-x"]
#: Counts, per answer, the times text is appended to it (a streamed answer grows many times).
COUNT_CHUNKS = """() => {
  window.chunks = {};
  new MutationObserver((records) => {
    for (const r of records) {
      const answer = r.target.closest(".answer");
      if (answer && r.target.classList.contains("answer-text")) {
        window.chunks[answer.dataset.model] = (window.chunks[answer.dataset.model] || 0) + 1;
      }
    }
  }).observe(document.getElementById("answers"), { childList: true, subtree: true });
}"""
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from tuneloop.config import Settings
    from tuneloop.models import Catalog

    home = tmp_path_factory.mktemp("dashboard-home")
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    server = ServerProcess(home, env={"TUNELOOP_API_KEY": KEY}).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def root(server) -> str:
    return server.base_url.removesuffix("/v1")


def test_every_page_and_data_request_needs_the_key(server, root):
    with httpx.Client(base_url=root) as anonymous:
        for path in ["/", *PAGES]:
            response = anonymous.get(path, follow_redirects=True)
            assert response.url.path == "/ui/login", path  # a page without a session: the sign-in form only
            assert 'id="login-form"' in response.text and "<table" not in response.text
        for path in ["/v1/models", "/v1/files", "/v1/fine_tuning/jobs", "/v1/files/file-x/validation"]:
            response = anonymous.get(path)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path
        wrong = anonymous.post("/ui/login", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "Incorrect API key provided."
        anonymous.cookies.set("tuneloop_session", "forged")
        assert anonymous.get("/ui/jobs").status_code == 303
        anonymous.cookies.clear()
        assert anonymous.get("/ui/static/js/common.js").status_code == 200  # the pages' code is public, not data

        signed = anonymous.post("/ui/login", headers={"Authorization": f"Bearer {KEY}"})
        assert signed.status_code == 204
        cookie = signed.headers["set-cookie"]
        assert KEY not in cookie and "HttpOnly" in cookie and "max-age" not in cookie.lower()  # a session cookie
        for path in PAGES:
            page = anonymous.get(path)
            assert page.status_code == 200 and "<main" in page.text, path
        assert anonymous.get("/v1/models").status_code == 401  # the cookie opens pages, never the data
        hostile = anonymous.get("/ui/jobs/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")  # a page echoes its job id escaped
        assert "<img src=x" not in hostile.text and "&lt;img src=x onerror=alert(1)&gt;" in hostile.text
        anonymous.post("/ui/logout")
        assert anonymous.get("/ui/jobs").status_code == 303
    assert KEY not in server.read_log(200_000)  # neither in a URL nor in any log line


def test_a_stored_file_validation_report(server):
    client = server.client(api_key=KEY)
    path = Path(server.home) / "broken.jsonl"
    path.write_text(Path(chat_jsonl(server.home / "ok.jsonl", 12)).read_text() + "{not json\n")
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    report = client.get(f"/files/{uploaded.id}/validation", cast_to=object, options={"params": {"model": "tiny-llama"}})
    assert report["ok"] is False and report["path"] == "broken.jsonl" and report["n_examples"] == 13
    assert report["errors"][0]["line"] == 13 and report["stats"]["total_tokens"]["max"] > 0
    assert str(server.home) not in json.dumps(report)
    with pytest.raises(openai.NotFoundError):
        client.get(f"/files/{uploaded.id}/validation", cast_to=object, options={"params": {"model": "nope"}})


def _api_error(server, method: str, path: str, **kwargs) -> str:
    """The message the API itself answers to a bad request (what a form must show)."""
    response = httpx.request(method, server.base_url + path, headers={"Authorization": f"Bearer {KEY}"}, **kwargs)
    assert response.status_code >= 400
    return response.json()["error"]["message"]


@pytest.mark.skipif(CHROMIUM is None, reason="the dashboard tests need Chromium (Debian: apt install chromium)")
def test_the_whole_loop_in_chromium(server, root, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need playwright (tuneloop[test])")
    shots = Path(os.environ.get("TUNELOOP_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    good = Path(chat_jsonl(tmp_path / "yes-no.jsonl", 40))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(good.read_text().splitlines()[:12]) + '\n{"messages": [}\n')

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        expect = sync_api.expect

        # sign in: a wrong key is refused with the API's text next to the field
        page.goto(root + "/ui/files")
        page.fill("#api-key", "wrong")
        page.click("#login-form button[type=submit]")
        expect(page.locator("[data-error-for=api_key]")).to_have_text("Incorrect API key provided.")
        page.fill("#api-key", KEY)
        page.click("#login-form button[type=submit]")
        page.wait_for_url("**/ui/files")

        # Files: no file, then a broken JSONL, then a good one with its report before any job
        page.click("#upload-form button[type=submit]")
        no_file = _api_error(server, "POST", "/files", data={"purpose": "fine-tune"})
        expect(page.locator("[data-error-for=file]")).to_have_text(no_file)
        page.select_option("#check-model", "tiny-llama")
        page.set_input_files("#file", str(broken))
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#report-verdict")).to_contain_text("1 error(s) in 13 example(s)")
        expect(page.locator("#report-body")).to_contain_text("13")  # the line of the error, in the table
        expect(page.locator("[data-error-for=file]")).to_contain_text("line 13: ")
        page.set_input_files("#file", str(good))
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#report-verdict")).to_contain_text("40 examples in the chat format, no errors")
        expect(page.locator("#report-estimate")).to_contain_text("trained tokens")
        page.screenshot(path=shots / "files.png", full_page=True)

        # New job: an out-of-range hyperparameter gets the API's message next to its field
        page.click("text=Start a job with this file")
        page.wait_for_url("**/ui/jobs/new?training_file=*")
        page.select_option("#model", "tiny-llama")
        page.fill("#n_epochs", "500")
        page.click("#job-form button[type=submit]")
        training_file = page.input_value("#training_file")
        out_of_range = _api_error(server, "POST", "/fine_tuning/jobs", json={
            "model": "tiny-llama", "training_file": training_file, "hyperparameters": {"n_epochs": 500}})  # fmt: skip
        expect(page.locator("[data-error-for='hyperparameters.n_epochs']")).to_have_text(out_of_range)
        page.fill("#n_epochs", "")
        expect(page.locator("#beta-field")).to_be_hidden()
        page.select_option("#method", "dpo")  # DPO: beta appears, and its error lands beside it
        page.fill("#beta", "5")
        page.click("#job-form button[type=submit]")
        bad_beta = _api_error(server, "POST", "/fine_tuning/jobs", json={
            "model": "tiny-llama", "training_file": training_file,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}})  # fmt: skip
        expect(page.locator("[data-error-for='hyperparameters.beta']")).to_have_text(bad_beta)
        page.select_option("#method", "supervised")
        expect(page.locator("#beta-field")).to_be_hidden()
        page.fill("#n_epochs", "10")
        page.fill("#batch_size", "1")
        page.fill("#suffix", "yes-no")
        page.screenshot(path=shots / "new_job.png", full_page=True)
        page.click("#job-form button[type=submit]")
        page.wait_for_url(re.compile(r".*/ui/jobs/ftjob-[^/]+$"))

        # Job: the loss chart gains points while the job runs, then the job succeeds
        chart = page.locator("#loss-chart")
        page.wait_for_function("+document.querySelector('#loss-chart').dataset.points > 0", timeout=180_000)
        seen = [(int(chart.get_attribute("data-points")), page.inner_text("#job-status"))]
        page.wait_for_function(f"+document.querySelector('#loss-chart').dataset.points > {seen[0][0]}", timeout=60_000)
        assert seen[0][1] == "running", seen  # the first points came while it trained
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
        expect(page.locator("#checkpoints-table tbody tr").first).to_be_visible()
        assert int(chart.get_attribute("data-points")) == 400  # 40 examples x 10 epochs at batch 1
        page.screenshot(path=shots / "job.png", full_page=True)
        job_id = page.url.rsplit("/", 1)[1]
        fine_tuned = server.client(api_key=KEY).fine_tuning.jobs.retrieve(job_id).fine_tuned_model

        page.goto(root + "/ui/jobs")
        expect(page.locator(f"tr[data-job-id='{job_id}']")).to_contain_text("succeeded")
        page.select_option("#status-filter", "failed")
        expect(page.locator(f"tr[data-job-id='{job_id}']")).to_have_count(0)
        page.select_option("#status-filter", "")
        expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
        page.screenshot(path=shots / "jobs.png", full_page=True)

        page.goto(root + "/ui/models")
        expect(page.locator("#ft-models")).to_contain_text(fine_tuned)
        expect(page.locator("#checkpoints")).to_contain_text(f"{fine_tuned}:ckpt-step-400")
        page.screenshot(path=shots / "models.png", full_page=True)

        # Playground: the base and the fine-tuned model, both answers streamed in side by side
        page.goto(root + "/ui/playground")
        page.wait_for_selector(f"#model-1 option[value='{fine_tuned}']", state="attached")
        page.select_option("#model-0", "tiny-llama")
        page.select_option("#model-1", fine_tuned)
        page.fill("#system", "Answer yes or no.")
        page.fill("#prompt", "Is the sky blue?")
        page.fill("#max_tokens", "24")
        page.evaluate(COUNT_CHUNKS)
        page.click("#run")
        page.wait_for_function(
            "[...document.querySelectorAll('.answer')].length === 2 && "
            "[...document.querySelectorAll('.answer')].every(a => a.dataset.state === 'done')",
            timeout=60_000,
        )
        answers = page.locator(".answer")
        assert [answers.nth(i).get_attribute("data-model") for i in range(2)] == ["tiny-llama", fine_tuned]
        assert all(int(answers.nth(i).get_attribute("data-tokens")) > 0 for i in range(2))
        chunks = page.evaluate("window.chunks")
        assert chunks.get("tiny-llama", 0) > 1 and chunks.get(fine_tuned, 0) > 1, chunks  # streamed, not at once
        expect(answers.nth(1).locator(".stats")).to_contain_text("completion tokens")
        page.screenshot(path=shots / "playground.png", full_page=True)

        # Evals: a real `tuneloop eval` report, uploaded by the command
        _run_eval(server, tmp_path, good, job_id)
        page.goto(root + "/ui/evals")
        expect(page.locator("#eval-table tbody tr")).to_have_count(2)
        expect(page.locator("#eval-report")).to_contain_text(fine_tuned)
        page.wait_for_function("+document.querySelector('#eval-report .chart').dataset.points === 400")
        page.screenshot(path=shots / "evals.png", full_page=True)

        # a phone: the job page fits its width
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(root + "/ui/login")
        phone.evaluate(f"sessionStorage.setItem('tuneloop.apiKey', {json.dumps(KEY)})")
        phone.context.add_cookies(page.context.cookies())
        phone.goto(f"{root}/ui/jobs/{job_id}")
        expect(phone.locator("#job-status")).to_have_text("succeeded")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        phone.screenshot(path=shots / "job-phone.png", full_page=False)
        browser.close()
    assert not errors, errors
    assert {p.name for p in shots.iterdir()} >= {f"{n}.png" for n in ("files", "new_job", "job", "jobs", "models",
                                                                      "playground", "evals")}  # fmt: skip


def _run_eval(server, tmp_path: Path, heldout: Path, job_id: str) -> None:
    import typer
    from typer.testing import CliRunner

    from tuneloop.cli.eval import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    args = ["--data", str(heldout), "--base", "tiny-llama", "--job", job_id, "--limit", "4", "--max-tokens", "2",
            "--base-url", server.base_url, "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"TUNELOOP_API_KEY": KEY, "COLUMNS": "200"})
    assert result.exit_code == 0 and "uploaded the report as file-" in result.output, result.output
