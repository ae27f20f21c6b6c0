"""Does fine-tuning beat prompting *and* the classical baseline on a hard many-label task? CLINC150.

For each size (examples per intent, default 8 and 16: the first ones of each intent in
train.jsonl) it starts a tuneloop server, uploads the subset, fine-tunes ``smollm2-135m-instruct``
through the API with ``auto`` hyperparameters (and, with ``--validation``, 4 examples per intent of
valid.jsonl as the job's validation file), then evaluates on 600 test examples (4 per intent,
drawn with a fixed seed) the base model few-shot (shots from the same subset), the fine-tuned
model and the TF-IDF + logistic-regression baseline trained on the same subset (``tuneloop[eval]``).
It prints accuracy, macro-F1, invalid-label rate, prompt tokens, latency and training time per
candidate and size, and a Markdown table for the README.

    python benchmarks/clinc_eval.py --sizes 8,16

Reports go to ``--out`` (default ``clinc-results/``). The data folder is never a dependency of
tuneloop itself; this script exits with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clinc150"
BASE = "smollm2-135m-instruct"
MAX_TOKENS = 16  # the longest intent label is 7 tokens


def read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def label(line: str) -> str:
    return json.loads(line)["messages"][-1]["content"]


def first_per_label(lines: list[str], k: int) -> list[str]:
    """The first ``k`` lines of each label, in file order."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for line in lines:
        if seen[label(line)] < k:
            seen[label(line)] += 1
            out.append(line)
    return out


def sample_per_label(lines: list[str], k: int, seed: int) -> list[str]:
    """``k`` random lines of each label (fixed seed), in file order."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, line in enumerate(lines):
        by_label[label(line)].append(i)
    rng = random.Random(seed)
    keep = sorted(i for idx in by_label.values() for i in rng.sample(idx, min(k, len(idx))))
    return [lines[i] for i in keep]


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,16", help="Training examples per intent, comma-separated.")
    parser.add_argument("--test-per-label", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fewshot-budget", type=int, default=1024, help="Token budget of the few-shot examples.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("clinc-results"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"no CLINC150 data at {DATA} (this benchmark needs ../shared/data/clinc150)")

    from tuneloop.api.process import ServerProcess
    from tuneloop.config import get_settings
    from tuneloop.evals import Candidate, EvalConfig, build_report, print_report, run_eval, write_html, write_json
    from tuneloop.evals.report import parse_metrics_csv
    from tuneloop.jobs.follow import watch
    from tuneloop.models import Catalog

    console = Console(width=160)
    settings = get_settings()
    Catalog(settings).ensure_ready(Catalog(settings).get(BASE))
    test_file = write(
        args.out / "test.jsonl", sample_per_label(read(DATA / "test.jsonl"), args.test_per_label, args.seed)
    )
    valid_file = write(args.out / "valid.jsonl", first_per_label(read(DATA / "valid.jsonl"), 4))
    train_lines = read(DATA / "train.jsonl")
    server = ServerProcess(settings.home, log_path=args.out / "server.log", api_key=settings.api_key).wait_ready()
    client = server.client(max_retries=2, timeout=600)
    tables = []
    try:
        validation_id = None
        if args.validation:
            with valid_file.open("rb") as f:
                validation_id = client.files.create(file=f, purpose="fine-tune").id
        for size in map(int, args.sizes.split(",")):
            out = args.out / f"{size}-per-intent"
            train_file = write(out / "train.jsonl", first_per_label(train_lines, size))
            with train_file.open("rb") as f:
                training = client.files.create(file=f, purpose="fine-tune")
            job = client.fine_tuning.jobs.create(
                model=BASE, training_file=training.id, validation_file=validation_id, suffix=f"clinc-{size}"
            )
            job = watch(client, job.id)
            if job.status != "succeeded":
                sys.exit(f"{job.id} {job.status}: {job.error}")
            began = [
                e.created_at for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "started" in e.message
            ]
            train_seconds = job.finished_at - max(began)
            hp = job.hyperparameters
            console.print(
                f"{size}/intent: {job.fine_tuned_model}: {hp.n_epochs} epochs, batch {hp.batch_size}, "
                f"lr x{hp.learning_rate_multiplier}, {job.trained_tokens:,} tokens in {train_seconds / 60:.1f} min"
            )
            candidates = [
                Candidate("base few-shot", BASE, few_shot="auto"),
                Candidate("fine-tuned", job.fine_tuned_model),
            ]
            config = EvalConfig(
                data=test_file, train=train_file, candidates=candidates, base_url=server.base_url,
                api_key=server.api_key, max_tokens=MAX_TOKENS, fewshot_budget=args.fewshot_budget,
                concurrency=args.concurrency, progress=False,
            )  # fmt: skip
            report = build_report(run_eval(config))
            print_report(report, console)
            write_json(out / "report.json", report)
            csv = client.files.content(job.result_files[0]).text
            write_html(out / "report.html", report, [parse_metrics_csv(csv, job.fine_tuned_model)])
            (out / "job.json").write_text(json.dumps({"job": job.to_dict(), "train_seconds": train_seconds}, indent=2))
            tables.append(markdown_rows(size, report, train_seconds, hp))
    finally:
        server.stop()
    table = "\n".join(
        [
            "| per intent | candidate | accuracy | macro-F1 | invalid label | prompt tokens | latency (s) | training |",
            "|---:|---|---:|---:|---:|---:|---:|---|",
            *[row for rows in tables for row in rows],
        ]
    )
    note = f"{sum(1 for _ in test_file.open())} test examples ({args.test_per_label} per intent, seed {args.seed})."
    (args.out / "table.md").write_text(table + "\n\n" + note + "\n", encoding="utf-8")
    console.print(table + "\n\n" + note)


def markdown_rows(size: int, report, train_seconds: float, hp) -> list[str]:
    """One README row per candidate of one size."""
    rows = []
    for c in report.candidates:
        m = c.metrics
        tokens = f"{c.mean_prompt_tokens:.0f}" if c.mean_prompt_tokens is not None else "—"
        latency = f"{c.mean_latency_s:.3f}" if c.mean_latency_s is not None else "—"
        training = (
            f"{train_seconds / 60:.1f} min ({hp.n_epochs} epochs, batch {hp.batch_size})"
            if c.name == "fine-tuned"
            else ""
        )
        rows.append(
            f"| {size} | {c.name} | {100 * m.get('accuracy', float('nan')):.1f}% | "
            f"{100 * m.get('macro_f1', float('nan')):.1f}% | {100 * m.get('invalid_label_rate', float('nan')):.1f}% | "
            f"{tokens} | {latency} | {training} |"
        )
    return rows


if __name__ == "__main__":
    main()
