"""``tuneloop quickstart``: the whole loop on the bundled model, through the OpenAI-compatible API.

1. generate a small task (smart-home intents) and validate it;  2. start the server, upload the
files and fine-tune ``smollm2-135m-instruct`` with LoRA through the API;  3. evaluate base
zero-shot vs base few-shot vs fine-tuned on held-out examples, beside a TF-IDF + logistic regression
classifier trained on the same file (with ``tuneloop[eval]``);  4. chat with the fine-tuned model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from tuneloop.api.process import ServerProcess
from tuneloop.config import Settings
from tuneloop.data.render import ChatRenderer
from tuneloop.data.report import print_validation
from tuneloop.data.validate import validate_file
from tuneloop.errors import TuneloopError
from tuneloop.evals import (
    Candidate,
    EvalConfig,
    build_report,
    parse_metrics_csv,
    print_report,
    run_eval,
    write_html,
    write_json,
)
from tuneloop.jobs.follow import watch
from tuneloop.models import Catalog, load_tokenizer
from tuneloop.quickstart.task import write_task

BASE = "smollm2-135m-instruct"
console = Console()


def _step(n: int, title: str) -> None:
    console.rule(f"[bold]{n}. {title}")


def run_quickstart(settings: Settings, workdir: Path, n_train: int = 240, n_valid: int = 60, base: str = BASE) -> Path:
    """Run the loop end to end; return the path of the HTML report."""
    started = time.perf_counter()
    _step(1, "Prepare: generate and validate a small task")
    train_file, valid_file = write_task(workdir / "data", n_train, n_valid)
    console.print(f"wrote {n_train} training and {n_valid} held-out examples to {train_file.parent}")
    catalog = Catalog(settings)
    entry = catalog.ensure_ready(catalog.get(base))
    report = validate_file(train_file, ChatRenderer(load_tokenizer(entry)), entry.context_length, entry.parameter_count)
    print_validation(report, base)
    if not report.ok:
        raise TuneloopError("the generated training file did not validate")

    _step(2, "Train: fine-tune through the OpenAI-compatible API")
    server = ServerProcess(settings.home, log_path=workdir / "server.log", api_key=settings.api_key).wait_ready()
    base_url = server.base_url
    client = server.client(max_retries=2)
    try:
        with train_file.open("rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        with valid_file.open("rb") as f:
            validation = client.files.create(file=f, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=base, training_file=training.id, validation_file=validation.id, suffix="quickstart"
        )
        console.print(f"created {job.id} (uploaded {training.id}, {validation.id}); following it:")
        job = watch(client, job.id)
        if job.status != "succeeded":
            raise TuneloopError(f"{job.id} {job.status}: {job.error.message if job.error else ''}")
        console.print(f"fine-tuned model: [bold]{job.fine_tuned_model}[/] ({job.trained_tokens:,} tokens trained)")

        _step(3, "Evaluate: base zero-shot vs base few-shot vs fine-tuned vs TF-IDF, on held-out examples")
        candidates = [
            Candidate("base zero-shot", base),
            Candidate("base few-shot", base, few_shot="auto"),
            Candidate("fine-tuned", job.fine_tuned_model),
        ]
        config = EvalConfig(
            data=valid_file, train=train_file, candidates=candidates, base_url=base_url, api_key=client.api_key,
            max_tokens=16, fewshot_budget=512, concurrency=4,
        )  # fmt: skip
        evaluation = build_report(run_eval(config))
        print_report(evaluation, console)
        csv = client.files.content(job.result_files[0]).text
        out = workdir / "report"
        write_json(out / "report.json", evaluation)
        html = write_html(out / "report.html", evaluation, [parse_metrics_csv(csv, job.fine_tuned_model)])
        console.print(f"report: {html} (and report.json)")

        _step(4, "Use: a chat completion from the fine-tuned model (openai client)")
        question = "could you put on some Daft Punk in the kitchen"
        reply = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "system", "content": _system(train_file)},
                                                  {"role": "user", "content": question}],
            max_tokens=16, temperature=0,
        )  # fmt: skip
        console.print(f"user: {question}\n{job.fine_tuned_model}: [bold]{reply.choices[0].message.content}[/]")
    finally:
        server.stop()
    console.print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return html


def _system(train_file: Path) -> str:
    with train_file.open() as f:
        return json.loads(f.readline())["messages"][0]["content"]
