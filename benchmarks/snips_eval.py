"""Does fine-tuning beat prompting on Snips? The whole loop on ../shared/data/snips, through the API.

For each task (``intent``: one label of 7; ``slots``: a JSON object of slot spans) it starts a
tuneloop server, uploads the first N training examples, fine-tunes ``smollm2-135m-instruct``
with LoRA and "auto" hyperparameters, then evaluates base zero-shot, base few-shot (shots drawn
from the same training subset, filling a token budget) and the fine-tuned model on held-out
examples, and prints the comparison and a Markdown table for the README.

    python benchmarks/snips_eval.py --task intent --train-examples 512 --valid-examples 700
    python benchmarks/snips_eval.py --task slots --train-examples 512 --valid-examples 700

Reports (JSON and HTML) go to ``--out`` (default ``snips-results/``). The data folder is never a
dependency of tuneloop itself; this script exits with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "snips"
BASE = "smollm2-135m-instruct"
#: Longest answer each task needs (a label; a JSON object of a few spans).
MAX_TOKENS = {"intent": 12, "slots": 96}
#: Columns of the README table per task: (metric key, heading).
QUALITY = {
    "intent": [("accuracy", "accuracy"), ("macro_f1", "macro-F1")],
    "slots": [("json_valid", "valid JSON"), ("key_value_f1", "key/value F1"), ("json_exact_match", "exact")],
}


def head(src: Path, n: int, dest: Path) -> Path:
    """The first ``n`` lines of ``src`` written to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open(encoding="utf-8") as f:
        dest.write_text("".join(line for _, line in zip(range(n), f, strict=False)), encoding="utf-8")
    return dest


def markdown_table(task: str, report, train_seconds: float, n_train: int) -> str:
    """The README table: quality, prompt tokens and latency per candidate."""
    cols = QUALITY[task]
    lines = [
        "| candidate | " + " | ".join(h for _, h in cols) + " | prompt tokens | latency (s) |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for c in report.candidates:
        quality = " | ".join(f"{100 * c.metrics.get(k, float('nan')):.1f}%" for k, _ in cols)
        lines.append(f"| {c.name} | {quality} | {c.mean_prompt_tokens:.0f} | {c.mean_latency_s:.2f} |")
    lines.append("")
    lines.append(
        f"{report.n_examples} held-out examples; fine-tuned on the first {n_train} training examples "
        f"in {train_seconds / 60:.1f} min (LoRA, auto hyperparameters)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["intent", "slots"], default="intent")
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--valid-examples", type=int, default=700)
    parser.add_argument("--epochs", default="auto", help="n_epochs for the job (a number or auto).")
    parser.add_argument("--fewshot-budget", type=int, default=1024, help="Token budget of the few-shot examples.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("snips-results"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no Snips data at {DATA} (this benchmark needs ../shared/data/snips)")

    from tuneloop.api.process import ServerProcess
    from tuneloop.cli.jobs import watch
    from tuneloop.config import get_settings
    from tuneloop.evals import Candidate, EvalConfig, build_report, print_report, run_eval, write_html, write_json
    from tuneloop.evals.report import parse_metrics_csv
    from tuneloop.models import Catalog

    console = Console()
    settings = get_settings()
    Catalog(settings).ensure_ready(Catalog(settings).get(BASE))
    out = args.out / args.task
    train_file = head(DATA / f"{args.task}_train.jsonl", args.train_examples, out / "train.jsonl")
    valid_file = head(DATA / f"{args.task}_valid.jsonl", args.valid_examples, out / "valid.jsonl")

    server = ServerProcess(settings.home, log_path=out / "server.log", api_key=settings.api_key).wait_ready()
    client = server.client(max_retries=2, timeout=600)
    try:
        with train_file.open("rb") as f:
            training = client.files.create(file=f, purpose="fine-tune")
        epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
        started = time.perf_counter()
        job = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, suffix=f"snips-{args.task}", hyperparameters={"n_epochs": epochs}
        )
        job = watch(client, job.id)
        if job.status != "succeeded":
            sys.exit(f"{job.id} {job.status}: {job.error}")
        # from "Fine-tuning job started" (not from creation: the worker may still be busy with another job)
        began = [e.created_at for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "started" in e.message]
        train_seconds = job.finished_at - max(began) if began else time.perf_counter() - started
        console.print(f"{job.fine_tuned_model}: {job.trained_tokens:,} tokens in {train_seconds / 60:.1f} min")

        candidates = [
            Candidate("base zero-shot", BASE),
            Candidate("base few-shot", BASE, few_shot="auto"),
            Candidate("fine-tuned", job.fine_tuned_model),
        ]
        config = EvalConfig(
            data=valid_file, train=train_file, candidates=candidates, base_url=server.base_url,
            api_key=server.api_key, max_tokens=MAX_TOKENS[args.task], fewshot_budget=args.fewshot_budget,
            concurrency=args.concurrency,
        )  # fmt: skip
        report = build_report(run_eval(config))
        print_report(report, console)
        write_json(out / "report.json", report)
        csv = client.files.content(job.result_files[0]).text
        write_html(out / "report.html", report, [parse_metrics_csv(csv, job.fine_tuned_model)])
        table = markdown_table(args.task, report, train_seconds, args.train_examples)
        (out / "table.md").write_text(table + "\n", encoding="utf-8")
        summary = {"job": job.to_dict(), "train_seconds": train_seconds}
        (out / "job.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        console.print(table)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
