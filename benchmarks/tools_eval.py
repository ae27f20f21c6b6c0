"""Does fine-tuning teach the bundled model to call tools? The smart-home function-calling task.

Generates ``tuneloop.quickstart.tools_task`` (seven typed functions; some requests call two at
once, some need no tool), starts a tuneloop server, fine-tunes ``smollm2-135m-instruct`` through the
API with ``auto`` hyperparameters, then evaluates on held-out requests the base model and the
fine-tuned model, both sent the same ``tools`` (``tool_choice`` auto), with ``tuneloop eval``'s
tool-call grader: exact calls, function-name accuracy, argument exact match and key/value F1, calls
made / withheld when expected, and arguments valid against their function's JSON schema. It prints
the table, prompt tokens and latency, and a Markdown table for the README.

    python benchmarks/tools_eval.py              # 320 training, 100 held-out examples

Reports go to ``--out`` (default ``tools-results/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

BASE = "smollm2-135m-instruct"
COLUMNS = [
    ("exact_call_match", "exact calls"),
    ("name_accuracy", "function name"),
    ("arguments_exact", "arguments exact"),
    ("arguments_f1", "arguments F1"),
    ("called_when_expected", "called when expected"),
    ("no_call_when_expected", "no call when expected"),
    ("valid_arguments", "schema-valid arguments"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=320, help="Training examples.")
    parser.add_argument("--test", type=int, default=100, help="Held-out examples.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("tools-results"))
    args = parser.parse_args()

    from tuneloop.api.process import ServerProcess
    from tuneloop.config import get_settings
    from tuneloop.evals import Candidate, EvalConfig, build_report, print_report, write_html, write_json
    from tuneloop.evals.runner import run_eval
    from tuneloop.jobs.follow import watch
    from tuneloop.models import Catalog
    from tuneloop.quickstart.tools_task import write_task

    console = Console(width=160)
    settings = get_settings()
    Catalog(settings).ensure_ready(Catalog(settings).get(BASE))
    train_file, test_file = write_task(args.out, args.train, args.test, args.seed)
    server = ServerProcess(settings.home, log_path=args.out / "server.log", api_key=settings.api_key).wait_ready()
    client = server.client(max_retries=2, timeout=600)
    try:
        with train_file.open("rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        job = watch(client, client.fine_tuning.jobs.create(model=BASE, training_file=training.id, suffix="tools").id)
        if job.status != "succeeded":
            raise SystemExit(f"{job.id} {job.status}: {job.error}")
        began = [e.created_at for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "started" in e.message]
        train_seconds = job.finished_at - max(began)
        hp = job.hyperparameters
        console.print(
            f"{job.fine_tuned_model}: {hp.n_epochs} epochs, batch {hp.batch_size}, lr x{hp.learning_rate_multiplier}, "
            f"{job.trained_tokens:,} tokens in {train_seconds / 60:.1f} min"
        )
        config = EvalConfig(
            data=test_file, train=train_file, candidates=[Candidate("base", BASE), Candidate("fine-tuned",
            job.fine_tuned_model)], base_url=server.base_url, api_key=server.api_key, max_tokens=96,
            concurrency=args.concurrency, progress=False, grader="tools",
        )  # fmt: skip
        report = build_report(run_eval(config))
        print_report(report, console)
        write_json(args.out / "report.json", report)
        write_html(args.out / "report.html", report)
        (args.out / "job.json").write_text(json.dumps({"job": job.to_dict(), "train_seconds": train_seconds}, indent=2))
    finally:
        server.stop()
    header = "| candidate | " + " | ".join(label for _, label in COLUMNS) + " | prompt tokens | latency (s) |"
    rows = [header, "|---" + "|---:" * (len(COLUMNS) + 2) + "|"]
    for c in report.candidates:
        cells = [f"{100 * c.metrics[k]:.0f}%" if k in c.metrics else "—" for k, _ in COLUMNS]
        tokens = f"{c.mean_prompt_tokens:.0f}" if c.mean_prompt_tokens is not None else "—"
        latency = f"{c.mean_latency_s:.2f}" if c.mean_latency_s is not None else "—"
        rows.append(f"| {c.name} | " + " | ".join(cells) + f" | {tokens} | {latency} |")
    note = (
        f"{args.train} training / {args.test} held-out examples (seed {args.seed}); fine-tuned with auto: "
        f"{hp.n_epochs} epochs, batch {hp.batch_size}, {train_seconds / 60:.1f} min of training."
    )
    table = "\n".join(rows) + "\n\n" + note + "\n"
    (args.out / "table.md").write_text(table, encoding="utf-8")
    console.print(table)


if __name__ == "__main__":
    main()
