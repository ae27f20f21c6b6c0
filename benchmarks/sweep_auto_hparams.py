"""The sweep behind the ``"auto"`` batch size and learning-rate rule (``tuneloop.train.config``).

Trains SmolLM2-135M-Instruct with LoRA (the defaults: r=16, alpha=32, dropout 0.05) on the
first N examples of a Snips task for every (batch size, learning-rate multiplier) pair, with
``n_epochs="auto"``, and prints the loss and token accuracy on held-out validation examples.
Results are appended to a JSONL file as they come, so an interrupted sweep continues.

    python benchmarks/sweep_auto_hparams.py --task intent --examples 256 --batch-sizes 4,8,16 --multipliers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "snips"


def subset(src: Path, n: int, dest: Path) -> Path:
    with src.open(encoding="utf-8") as f:
        dest.write_text("".join(line for _, line in zip(range(n), f, strict=False)), encoding="utf-8")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent", choices=["intent", "slots"])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--valid-examples", type=int, default=128)
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--multipliers", default="1,2,4")
    parser.add_argument("--epochs", default="auto")
    parser.add_argument("--results", type=Path, default=Path("sweep_results.jsonl"))
    args = parser.parse_args()

    from tuneloop.train import TrainConfig, train

    done = set()
    if args.results.is_file():
        done = {
            (r["task"], r["examples"], r["batch_size"], r["multiplier"]) for r in map(json.loads, args.results.open())
        }
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        train_file = subset(DATA / f"{args.task}_train.jsonl", args.examples, Path(tmp) / "train.jsonl")
        valid_file = subset(DATA / f"{args.task}_valid.jsonl", args.valid_examples, Path(tmp) / "valid.jsonl")
        for bs in map(int, args.batch_sizes.split(",")):
            for mult in map(float, args.multipliers.split(",")):
                if (args.task, args.examples, bs, mult) in done:
                    continue
                started = time.perf_counter()
                result = train(
                    TrainConfig(
                        model="smollm2-135m-instruct",
                        training_file=train_file,
                        validation_file=valid_file,
                        output_dir=Path(tmp) / f"bs{bs}-m{mult}",
                        n_epochs=args.epochs if args.epochs == "auto" else int(args.epochs),
                        batch_size=bs,
                        learning_rate_multiplier=mult,
                        eval_every=10**9,  # validation at the end only
                    )
                )
                m = result.final_metrics
                row = {
                    "task": args.task,
                    "examples": args.examples,
                    "batch_size": bs,
                    "multiplier": mult,
                    "epochs": result.hyperparameters.n_epochs,
                    "steps": result.total_steps,
                    "full_valid_loss": m.full_valid_loss,
                    "full_valid_mean_token_accuracy": m.full_valid_mean_token_accuracy,
                    "final_train_loss": m.train_loss,
                    "seconds": round(time.perf_counter() - started, 1),
                }
                print(json.dumps(row), flush=True)
                with args.results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [
        r for r in map(json.loads, args.results.open()) if r["task"] == args.task and r["examples"] == args.examples
    ]
    print(f"\n{args.task}, {args.examples} examples: full_valid_loss (token accuracy)")
    mults = sorted({r["multiplier"] for r in rows})
    print("batch \\ mult " + "".join(f"{m:>16}" for m in mults))
    for bs in sorted({r["batch_size"] for r in rows}):
        cells = {r["multiplier"]: r for r in rows if r["batch_size"] == bs}
        line = "".join(
            f"{cells[m]['full_valid_loss']:>9.4f} ({cells[m]['full_valid_mean_token_accuracy']:.2f})"
            if m in cells
            else " " * 16
            for m in mults
        )
        print(f"{bs:>12} " + line)


if __name__ == "__main__":
    main()
