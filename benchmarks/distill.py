"""Distillation, measured: does a student with a one-line prompt give its teacher's answers?

The task is the quick start's smart-home intents (``tuneloop.quickstart.task``, six labels). The
teacher is the bundled ``smollm2-135m-instruct`` with a long instruction prompt (the labels and what
each one covers) plus 60 few-shot turns, about 1,480 prompt tokens; the shots are generated with
``--shots-seed`` (4: on a separate dev set of 60 requests (task seed 99), 60 shots in the orders of
seeds 1-4 gave 57%, 43%, 43% and 85%, 48 shots 43-62%, 30 shots (seeds 1-6) 48-72%: the prompt
engineering a teacher's prompt gets; a consistent teacher is the one a student can imitate).
The student is the same model fine-tuned through
``tuneloop distill --fine-tune`` on the teacher's answers to the training requests — prompts only,
the generated labels are never used for training — with a one-line system prompt that names no label.

Then ``tuneloop eval``'s runner with ``reference="teacher"`` on held-out requests: agreement with the
teacher's answers, accuracy of each against the generated (gold) labels, mean prompt tokens, mean
latency, and the teacher calls paid for. The base model with the student's one-line prompt is shown
for scale.

    python benchmarks/distill.py             # 600 training prompts, 100 held-out

Files go to ``--out`` (default ``distill-results/``); a repeated run reuses the teacher cache there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from rich.console import Console

BASE = "smollm2-135m-instruct"
STUDENT_SYSTEM = "Route the smart-home request to its intent label."
DESCRIPTIONS = (
    "lights_on: the user wants light: turn on or switch on the lights, it is too dark, brighten a room. "
    "lights_off: the user wants less light: turn off, switch off or kill the lights, darken a room. "
    "set_temperature: the user wants a room warmer or colder or a thermostat set to a number of degrees. "
    "play_music: the user wants to hear music, an artist, a band, a composer or a playlist. "
    "add_to_list: the user wants an item added to the shopping list, needs to buy something or has run out of it. "
    "weather: the user asks about the weather, rain, heat, an umbrella or a forecast in a city."
)
COLUMNS = [("teacher_agreement", "agreement with teacher"), ("accuracy", "gold accuracy")]


def teacher_prompt(shots: int, seed: int) -> list[dict]:
    """The teacher's instruction prompt: the long system message and ``shots`` few-shot turns."""
    from tuneloop.quickstart.task import LABELS, SYSTEM, make_example

    rng = random.Random(seed)
    examples = [make_example(rng, LABELS[i % len(LABELS)]) for i in range(shots)]
    rng.shuffle(examples)
    turns = [m for example in examples for m in example["messages"][1:]]
    return [{"role": "system", "content": f"{SYSTEM} {DESCRIPTIONS}"}, *turns]


def write_files(out: Path, n_train: int, n_test: int, seed: int, preamble: list[dict]) -> tuple[Path, Path]:
    """The prompts for the teacher (no answers) and the held-out set with the student's prompt and gold labels."""
    from tuneloop.quickstart.task import write_task

    train, test = write_task(out / "task", n_train, n_test, seed)
    prompts, heldout = out / "prompts.jsonl", out / "heldout.jsonl"
    with prompts.open("w") as f:
        for line in train.open():
            f.write(json.dumps({"messages": [*preamble, json.loads(line)["messages"][1]]}) + "\n")
    with heldout.open("w") as f:
        for line in test.open():
            _, user, gold = json.loads(line)["messages"]
            f.write(json.dumps({"messages": [{"role": "system", "content": STUDENT_SYSTEM}, user, gold]}) + "\n")
    return prompts, heldout


def distill(server, prompts: Path, out: Path, console: Console) -> dict:
    """``tuneloop distill --fine-tune`` as a user runs it; its JSON summary."""
    argv = [sys.executable, "-m", "tuneloop.cli.main", "distill", str(prompts), "-o", str(out / "distilled"),
            "--teacher-base-url", server.base_url, "--teacher-model", BASE, "--teacher-key-env", "TUNELOOP_API_KEY",
            "--student-system", STUDENT_SYSTEM, "--last-turn-only", "--max-tokens", "8", "--temperature", "0",
            "--fine-tune", "--model", BASE, "--suffix", "distilled", "--base-url", server.base_url,
            "--json"]  # fmt: skip
    env = {**os.environ, "TUNELOOP_API_KEY": server.api_key}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tuneloop distill failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    console.print(
        f"distill: {summary['inputs']} prompts, {summary['asked']} asked, {summary['cached']} cached, "
        f"{summary['kept']} kept ({summary['train']} train / {summary['valid']} valid), dropped {summary['dropped']}"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=600, help="Training prompts sent to the teacher.")
    parser.add_argument("--test", type=int, default=100, help="Held-out requests.")
    parser.add_argument("--shots", type=int, default=60, help="Few-shot turns in the teacher's prompt.")
    parser.add_argument("--shots-seed", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated task.")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("distill-results"))
    args = parser.parse_args()

    from tuneloop.api.process import ServerProcess
    from tuneloop.config import get_settings
    from tuneloop.evals import Candidate, EvalConfig, build_report, print_report, write_html, write_json
    from tuneloop.evals.runner import run_eval
    from tuneloop.jobs.follow import watch
    from tuneloop.models import Catalog

    console = Console(width=160)
    settings = get_settings()
    Catalog(settings).ensure_ready(Catalog(settings).get(BASE))
    args.out.mkdir(parents=True, exist_ok=True)
    preamble = teacher_prompt(args.shots, args.shots_seed)
    (args.out / "teacher-prompt.json").write_text(json.dumps(preamble, indent=1))
    prompts, heldout = write_files(args.out, args.train, args.test, args.seed, preamble)
    server = ServerProcess(settings.home, log_path=args.out / "server.log", api_key=settings.api_key).wait_ready()
    client = server.client(max_retries=2, timeout=600)
    try:
        summary = distill(server, prompts, args.out, console)
        job = watch(client, summary["job"]["id"])
        if job.status != "succeeded":
            raise SystemExit(f"{job.id} {job.status}: {job.error}")
        began = [e.created_at for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "started" in e.message]
        train_seconds = job.finished_at - max(began)
        hp = job.hyperparameters
        console.print(
            f"{job.fine_tuned_model}: {hp.n_epochs} epochs, batch {hp.batch_size}, lr x{hp.learning_rate_multiplier}, "
            f"{job.trained_tokens:,} tokens in {train_seconds / 60:.1f} min"
        )
        teacher = Candidate(f"teacher (long prompt + {args.shots} shots)", BASE, preamble=tuple(preamble), teacher=True)
        candidates = [teacher, Candidate("student (distilled, one-line prompt)", job.fine_tuned_model),
                      Candidate("base, one-line prompt", BASE)]  # fmt: skip
        config = EvalConfig(
            data=heldout, candidates=candidates, base_url=server.base_url, api_key=server.api_key, max_tokens=8,
            concurrency=args.concurrency, progress=False, reference="teacher", baseline=teacher.name,
            classical_baseline=False,
        )  # fmt: skip
        report = build_report(run_eval(config))
        print_report(report, console)
        write_json(args.out / "report.json", report)
        write_html(args.out / "report.html", report)
    finally:
        server.stop()
    by_name = {c.name: c for c in report.candidates}
    header = "| candidate | " + " | ".join(label for _, label in COLUMNS) + " | prompt tokens | latency (s) |"
    rows = [header, "|---" + "|---:" * (len(COLUMNS) + 2) + "|"]
    for c in (by_name[x.name] for x in candidates):
        cells = [f"{100 * c.metrics[k]:.1f}%" if k in c.metrics else "—" for k, _ in COLUMNS]
        rows.append(f"| {c.name} | " + " | ".join(cells) + f" | {c.mean_prompt_tokens:.0f} | {c.mean_latency_s:.2f} |")
    teacher_tokens = by_name[teacher.name].mean_prompt_tokens
    student_tokens = by_name[candidates[1].name].mean_prompt_tokens
    note = (
        f"{args.train} training prompts / {args.test} held-out (task seed {args.seed}); teacher calls: "
        f"{summary['teacher_attempts']} by distill ({summary['asked']} answers bought, {summary['cached']} from the "
        f"cache) + {args.test} in the evaluation; student prompt {teacher_tokens / student_tokens:.1f}x shorter; "
        f"fine-tuned with auto: {hp.n_epochs} epochs, batch {hp.batch_size}, {train_seconds / 60:.1f} min of training."
    )
    table = "\n".join(rows) + "\n\n" + note + "\n"
    (args.out / "table.md").write_text(table, encoding="utf-8")
    console.print(table)


if __name__ == "__main__":
    main()
