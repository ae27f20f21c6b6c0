"""``tuneloop train``: fine-tune a model on a JSONL file, with a progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tuneloop.cli.options import BatchSize, Beta, Epochs, LearningRateMultiplier, Method, TrainingMethod
from tuneloop.config import get_settings
from tuneloop.train import StepMetrics, TrainCallbacks, TrainConfig


def train(
    model: str = typer.Option(..., "--model", "-m", help="Base model (see `tuneloop models list`)."),
    train_file: Path = typer.Option(
        ..., "--train", help="Training JSONL file (chat or prompt/completion; preference pairs for DPO)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (adapter or model, checkpoints, metrics.csv)."),
    valid_file: Path | None = typer.Option(None, "--valid", help="Validation JSONL file."),
    start_from: Path | None = typer.Option(
        None,
        "--start-from",
        exists=True,
        file_okay=False,
        help="Continue from an earlier run's weights (e.g. SFT, then --method dpo): its OUT/adapter, OUT/model or a "
        "checkpoint folder. DPO's reference model is then that model.",
    ),
    epochs: Epochs = "auto",
    batch_size: BatchSize = "auto",
    lr_multiplier: LearningRateMultiplier = "auto",
    method: Method = TrainingMethod.lora,
    beta: Beta = "auto",
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank."),
    max_length: int | None = typer.Option(None, "--max-length", help="Truncate examples to this many tokens."),
    seed: int = typer.Option(42, "--seed", help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    device: str | None = typer.Option(None, "--device", help="Torch device (default: TUNELOOP_DEVICE)."),
) -> None:
    """Fine-tune MODEL on a training file; writes OUT/adapter (LoRA) or OUT/model (full)."""
    from tuneloop.cpu import own_session, set_priority

    if beta != "auto" and method.objective != "dpo":
        raise typer.BadParameter("--beta is DPO's: use it with --method dpo or dpo-full", param_hint="'--beta'")
    nice = get_settings().train_nice
    if nice:
        own_session()  # before any thread starts: a session whose priority set_priority can lower too
    set_priority(nice)  # serving on the same machine goes first

    from tqdm import tqdm

    from tuneloop.train.loop import train as run_training  # here, not at the top: it loads torch

    config = TrainConfig(
        model=model,
        training_file=train_file,
        validation_file=valid_file,
        output_dir=out,
        start_from=start_from,
        method=method.weights,
        objective=method.objective,
        beta=beta,
        n_epochs=epochs,
        batch_size=batch_size,
        learning_rate_multiplier=lr_multiplier,
        lora_r=lora_r,
        lora_alpha=2.0 * lora_r,
        max_length=max_length,
        seed=seed,
        resume_from="latest" if resume else None,
        device=device,
    )
    bar: tqdm | None = None

    def on_step(m: StepMetrics) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=m.total_steps, initial=m.step - 1, unit="step", file=sys.stderr, dynamic_ncols=True)
        postfix = {"loss": f"{m.train_loss:.4f}", "tok/s": f"{m.tokens_per_second:.0f}"}
        if m.train_preference_accuracy is not None:
            postfix["pref"] = f"{m.train_preference_accuracy:.0%}"
        if m.valid_loss is not None:
            postfix["valid"] = f"{m.valid_loss:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    try:
        result = run_training(config, TrainCallbacks(on_step=on_step), settings=get_settings())
    finally:
        if bar is not None:
            bar.close()
    hp = result.hyperparameters
    print(
        f"Trained {result.steps_done} steps ({hp.n_epochs} epochs, batch {hp.batch_size}, "
        f"lr {hp.learning_rate:.2e}), {result.trained_tokens} tokens",
        file=sys.stderr,
    )
    m = result.final_metrics
    if m is not None:
        line = f"final train_loss {m.train_loss:.4f}"
        if m.full_valid_loss is not None:
            line += f", full_valid_loss {m.full_valid_loss:.4f}"
        if m.full_valid_answer_accuracy is not None:
            line += f", answer accuracy {m.full_valid_answer_accuracy:.1%}"
        if m.full_valid_preference_accuracy is not None:
            line += f", preference accuracy {m.full_valid_preference_accuracy:.1%}"
        print(line, file=sys.stderr)
    if (best := result.best_epoch) is not None and best.step < result.steps_done:
        print(
            f"kept epoch {best.epoch}: the best validation {'preference' if result.objective == 'dpo' else 'answer'}"
            f" accuracy ({best.answer_accuracy:.1%})",
            file=sys.stderr,
        )
    print(result.weights_path)
