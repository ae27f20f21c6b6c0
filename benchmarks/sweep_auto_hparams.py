"""The sweep behind the ``"auto"`` training rules (``tuneloop.train.config``).

Trains SmolLM2-135M-Instruct on a few-shot subset of a classification task for each
configuration given, and prints the held-out *answer accuracy* (the fraction of validation
examples whose whole answer the model predicts exactly, i.e. greedy exact match) after every
epoch, beside the validation loss: on many labels the two diverge, and accuracy decides.
Results are appended to a JSONL file as they come, so an interrupted sweep continues.

Tasks: ``clinc150`` (150 intents; the first ``--per-label`` training examples of each intent,
4 validation examples per intent from valid.jsonl) and ``snips`` (7 intents; the first
``--examples`` training examples, the first 128 validation examples).

    python benchmarks/sweep_auto_hparams.py --task clinc150 --per-label 8 \\
        --configs "method=lora,n_epochs=6" "method=full,n_epochs=6,learning_rate_multiplier=4"

A configuration is comma-separated ``TrainConfig`` fields (``method``, ``n_epochs``,
``batch_size``, ``learning_rate_multiplier``, ``lora_r``, ``lora_alpha``, ``warmup_ratio``, ...);
fields not given keep their ``auto``/default value.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def per_label(src: Path, k: int, dest: Path) -> Path:
    """The first ``k`` examples of each label (the assistant's answer) of ``src``, in file order."""
    seen: dict[str, int] = defaultdict(int)
    lines = []
    with src.open(encoding="utf-8") as f:
        for line in f:
            label = json.loads(line)["messages"][-1]["content"]
            if seen[label] < k:
                seen[label] += 1
                lines.append(line)
    dest.write_text("".join(lines), encoding="utf-8")
    return dest


def head(src: Path, n: int, dest: Path) -> Path:
    """The first ``n`` lines of ``src``."""
    with src.open(encoding="utf-8") as f:
        dest.write_text("".join(line for _, line in zip(range(n), f, strict=False)), encoding="utf-8")
    return dest


def parse_config(text: str) -> dict[str, object]:
    """``"method=full,n_epochs=6"`` -> {"method": "full", "n_epochs": 6} (numbers parsed)."""
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def epoch_rows(metrics_csv: Path) -> list[dict[str, float]]:
    """The rows of metrics.csv that carry full-validation metrics (one per epoch)."""
    with metrics_csv.open(encoding="utf-8") as f:
        return [
            {
                "epoch": int(r["epoch"]),
                "loss": float(r["full_valid_loss"]),
                "acc": float(r["full_valid_answer_accuracy"]),
            }
            for r in csv.DictReader(f)
            if r["full_valid_answer_accuracy"]
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="clinc150", choices=["clinc150", "snips"])
    parser.add_argument("--per-label", type=int, default=8, help="clinc150: training examples per intent.")
    parser.add_argument("--examples", type=int, default=128, help="snips: training examples.")
    parser.add_argument("--configs", nargs="+", default=["method=lora"])
    parser.add_argument("--results", type=Path, default=Path("sweep_results.jsonl"))
    args = parser.parse_args()

    from tuneloop.train import TrainConfig, train

    size = args.per_label if args.task == "clinc150" else args.examples
    done = set()
    if args.results.is_file():
        done = {(r["task"], r["size"], r["config"]) for r in map(json.loads, args.results.open())}
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        if args.task == "clinc150":
            train_file = per_label(SHARED / "clinc150" / "train.jsonl", args.per_label, Path(tmp) / "train.jsonl")
            valid_file = per_label(SHARED / "clinc150" / "valid.jsonl", 4, Path(tmp) / "valid.jsonl")
        else:
            train_file = head(SHARED / "snips" / "intent_train.jsonl", args.examples, Path(tmp) / "train.jsonl")
            valid_file = head(SHARED / "snips" / "intent_valid.jsonl", 128, Path(tmp) / "valid.jsonl")
        for text in args.configs:
            if (args.task, size, text) in done:
                continue
            started = time.perf_counter()
            out = Path(tmp) / f"run{len(done)}"
            result = train(
                TrainConfig(
                    model="smollm2-135m-instruct",
                    training_file=train_file,
                    validation_file=valid_file,
                    output_dir=out,
                    eval_every=10**9,  # validation batches off; full validation every epoch
                    keep_checkpoints=1,
                    **parse_config(text),
                )
            )
            hp = result.hyperparameters
            row = {
                "task": args.task,
                "size": size,
                "config": text,
                "epochs": hp.n_epochs,
                "batch_size": hp.batch_size,
                "learning_rate": hp.learning_rate,
                "steps": result.total_steps,
                "per_epoch": epoch_rows(result.metrics_csv),
                "seconds": round(time.perf_counter() - started, 1),
            }
            done.add((args.task, size, text))
            print(json.dumps(row), flush=True)
            with args.results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    rows = [r for r in map(json.loads, args.results.open()) if r["task"] == args.task and r["size"] == size]
    print(f"\n{args.task}, size {size}: held-out answer accuracy (loss) after each epoch; best marked *")
    for r in rows:
        best = max(r["per_epoch"], key=lambda e: e["acc"])
        cells = " ".join(f"{100 * e['acc']:5.1f}{'*' if e is best else ' '}({e['loss']:.2f})" for e in r["per_epoch"])
        print(f"{r['config']:<60} bs {r['batch_size']:>3} lr {r['learning_rate']:.1e} {r['seconds']:>6.0f}s  {cells}")


if __name__ == "__main__":
    main()
