"""``train(config, settings=...)``: the fine-tuning loop, supervised or DPO (``config.objective``). Setup lives in
the ``_setup_*`` helpers; the step (``_train_step``) and the loop (``_run_loop``) each fit on one screen.

Both objectives share everything but the batch and the loss: a DPO run packs pairs (``train.pairs``) and its
module (``train.dpo.DPOLoss``) returns the same ``LossSums``, normalised per pair instead of per token."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from pydantic import BaseModel, Field
from torch import nn

from tuneloop.config import Settings, get_settings
from tuneloop.cpu import ThreadGovernor
from tuneloop.data.estimate import AnswerProfile
from tuneloop.data.examples import Format, final_answer, load_examples, render_examples, render_preferences
from tuneloop.data.render import ChatRenderer
from tuneloop.errors import TuneloopError
from tuneloop.fileio import atomic_path, write_atomic
from tuneloop.train import checkpoint as ckpt
from tuneloop.train.batching import (
    Packable,
    PackedBatch,
    batch_indices,
    epoch_order,
    micro_batches,
    pack,
    shard,
    steps_per_epoch,
    to_sample,
)
from tuneloop.train.config import ResolvedHyperparameters, TrainConfig, resolve_hyperparameters
from tuneloop.train.distributed import DistContext, configure_cpu_threads, init_distributed, maybe_no_sync, shutdown
from tuneloop.train.dpo import DPOLoss, with_reference
from tuneloop.train.loss import step_loss_scale
from tuneloop.train.metrics import CheckpointInfo, MetricsCSV, StepMetrics, TrainCallbacks, safe_ratio
from tuneloop.train.modeling import build_model, load_weights, save_weights, trainable_parameters
from tuneloop.train.packed import PackedCausalLM
from tuneloop.train.pairs import pack_pairs, to_pair

#: The run's resolved configuration (every "auto" with the rule that chose it), beside its outputs.
RESOLVED_CONFIG = "resolved_config.json"
#: The best epoch's weights so far (select_best_epoch), until the run ends.
BEST_DIR = "best"


class BestEpoch(BaseModel):
    """The epoch with the best full-validation answer accuracy (DPO: preference accuracy) so far (ties: the
    lower loss)."""

    epoch: int = Field(description="1-based epoch.")
    step: int = Field(description="Its last step.")
    answer_accuracy: float = Field(
        description="full_valid_answer_accuracy at that step (DPO: full_valid_preference_accuracy)."
    )
    loss: float = Field(description="full_valid_loss at that step.")

    def beats(self, other: BestEpoch | None) -> bool:
        """Higher answer accuracy, or equal accuracy and lower loss."""
        return other is None or (self.answer_accuracy, -self.loss) > (other.answer_accuracy, -other.loss)


class TrainResult(BaseModel):
    """What a finished (or stopped) run produced."""

    output_dir: Path = Field(description="The run's folder.")
    weights_path: Path | None = Field(
        description="output_dir/adapter (LoRA) or output_dir/model (full); None if stopped."
    )
    method: str = Field(description="lora or full.")
    objective: str = Field(default="supervised", description="supervised or dpo.")
    hyperparameters: ResolvedHyperparameters = Field(description="Resolved n_epochs, batch_size, LR and their rules.")
    total_steps: int = Field(description="Optimizer steps of the whole run.")
    steps_done: int = Field(description="Steps completed (== total_steps unless stopped).")
    trained_tokens: int = Field(description="Tokens processed: sum of min(tokens, max_length) x epochs done.")
    final_metrics: StepMetrics | None = Field(description="Metrics of the last step run.")
    metrics_csv: Path = Field(description="Per-step metrics file.")
    resolved_config: Path = Field(description="output_dir/resolved_config.json.")
    checkpoints: list[Path] = Field(description="Checkpoint folders on disk, oldest first.")
    stopped: bool = Field(default=False, description="True when should_stop() ended the run early.")
    best_epoch: BestEpoch | None = Field(
        default=None, description="The epoch chosen as the final model by validation (select_best_epoch)."
    )


@dataclass
class _Run:
    """Everything the loop works with (built by ``_setup``)."""

    config: TrainConfig
    hp: ResolvedHyperparameters
    ctx: DistContext
    model: nn.Module  # the (PEFT) model, unwrapped
    module: nn.Module  # PackedCausalLM (DPO: DPOLoss around it), wrapped in DDP when distributed
    tokenizer: Any
    train: Sequence[Packable]  # Samples, or PairSamples for DPO
    valid: Sequence[Packable]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    steps_per_epoch: int
    meta: dict[str, Any]
    csv: MetricsCSV
    #: Each micro-batch's thread count: all, or one while other work shares the cores (``tuneloop.cpu``).
    governor: ThreadGovernor
    step: int = 0
    elapsed: float = 0.0
    orders: dict[int, list[int]] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    best: BestEpoch | None = None

    def order(self, epoch: int) -> list[int]:
        """The example order of ``epoch`` (remembered, so a checkpoint can save it)."""
        if epoch not in self.orders:
            self.orders = {epoch: epoch_order(len(self.train), self.config.seed, epoch)}
        return self.orders[epoch]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on GPU; float32 everywhere else (CPUs without bf16 units run it ~250x slower)."""
        if self.ctx.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def packed(self) -> nn.Module:
        """The packed model (PackedCausalLM, or DPOLoss around it), without the DDP wrapper."""
        return getattr(self.module, "module", self.module)

    @property
    def dpo(self) -> bool:
        """Whether this is a DPO run."""
        return self.config.objective == "dpo"

    def pack(self, samples: Sequence[Packable]) -> PackedBatch:
        """One micro-batch's tensors: examples, or DPO pairs."""
        return (pack_pairs if self.dpo else pack)(samples, self.config.share_prefix)  # type: ignore[arg-type]


class EvalSums(NamedTuple):
    """Validation results: mean loss; token accuracy (DPO: preference accuracy); answer accuracy (DPO: preference
    accuracy again); mean reward margin (DPO)."""

    loss: float
    accuracy: float
    answer_accuracy: float
    margin: float


def train(
    config: TrainConfig,
    callbacks: TrainCallbacks | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    settings: Settings | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.training_file``; resume, checkpoint and report as configured.

    ``settings`` gives the model catalog, the device when ``config.device`` is None, and the CPU
    threads; the entry points (``tuneloop train``, the job runner, ``python -m tuneloop.train``) pass
    theirs, and None reads them from the environment once, here (for scripts and benchmarks).
    ``should_stop`` is polled between steps: when it returns True a checkpoint is written and the
    result comes back with ``stopped=True`` (resume it with ``resume_from="latest"``).
    Runs unchanged under ``torchrun`` (one process per device; only rank 0 writes files).
    """
    settings = settings or get_settings()
    callbacks = callbacks or TrainCallbacks()
    ctx = init_distributed(config.device or settings.resolved_device(), settings.num_threads)
    try:
        run = _setup(config, ctx, settings)
        if callbacks.on_start and ctx.is_main:
            callbacks.on_start(run.hp)
        return _run_loop(run, callbacks, should_stop or (lambda: False))
    finally:
        shutdown(ctx)


def _run_loop(run: _Run, callbacks: TrainCallbacks, should_stop: Callable[[], bool]) -> TrainResult:
    cfg, hp, ctx = run.config, run.hp, run.ctx
    started, start_elapsed, tokens_here = time.perf_counter(), run.elapsed, 0
    metrics: StepMetrics | None = None
    while run.step < run.total_steps:
        step = run.step + 1
        epoch, index = divmod(step - 1, run.steps_per_epoch)
        epoch += 1
        indices = batch_indices(run.order(epoch), hp.batch_size, index)
        lr = run.optimizer.param_groups[0]["lr"]
        loss, accuracy, margin, tokens = _train_step(run, indices, step)
        run.step, tokens_here = step, tokens_here + tokens
        run.elapsed = start_elapsed + time.perf_counter() - started
        metrics = StepMetrics(
            step=step,
            total_steps=run.total_steps,
            epoch=epoch,
            train_loss=loss,
            **_accuracy_fields(run, "train", accuracy, margin),
            learning_rate=lr,
            trained_tokens=_tokens_done(run, step),
            tokens_per_second=tokens_here / max(time.perf_counter() - started, 1e-9),
            elapsed_seconds=run.elapsed,
        )
        epoch_end = index == run.steps_per_epoch - 1
        if run.valid and (step % _eval_every(run) == 0 or step == run.total_steps):
            metrics = _with_validation(run, metrics, "valid", _evaluate(run, _valid_window(run, step)))
        if run.valid and cfg.full_validation and (epoch_end or step == run.total_steps):
            full = _evaluate(run, range(len(run.valid)))
            metrics = _with_validation(run, metrics, "full_valid", full)
            if epoch_end and cfg.select_best_epoch:
                _keep_if_best(run, BestEpoch(epoch=epoch, step=step, answer_accuracy=full[2], loss=full[0]))
        _report_step(run, metrics, callbacks)
        stop = step < run.total_steps and ctx.any(should_stop())
        if epoch_end or stop:
            _checkpoint(run, epoch, metrics, callbacks)
        if epoch_end and callbacks.on_epoch_end and ctx.is_main:
            callbacks.on_epoch_end(epoch, metrics)
        if stop:
            return _result(run, metrics, stopped=True)
    return _finish(run, metrics)


def _train_step(run: _Run, indices: list[int], step: int) -> tuple[float, float, float, int]:
    """One optimizer step over a global batch: (mean loss, token or preference accuracy, mean reward margin,
    tokens processed); the means are per trained token, or per pair for DPO."""
    cfg, ctx, samples = run.config, run.ctx, run.train
    step_labels = sum(samples[i].n_labels for i in indices)
    mine = shard(indices, samples, ctx.rank, ctx.world_size)
    scale = step_loss_scale(step_labels, ctx.world_size) if mine else 0.0  # an idle rank still joins the all-reduce
    groups = micro_batches(mine or indices[:1], samples, cfg.micro_batch_tokens, cfg.micro_batch_size, cfg.share_prefix)
    torch.manual_seed(_step_seed(cfg.seed, step, ctx.rank))  # dropout masks are a function of (seed, step, rank)
    sums = [0.0, 0.0, 0.0]  # loss, correct (tokens or pairs), reward margins
    for i, group in enumerate(groups):
        batch = run.pack([samples[j] for j in group]).to(ctx.device)
        with run.governor, maybe_no_sync(run.module, skip_sync=i < len(groups) - 1):
            with run.autocast():
                out = run.module(batch)
            (out.loss * scale).backward()
        if mine:
            sums = [sums[0] + out.loss.item(), sums[1] + out.correct.item(), sums[2] + float(out.margin)]
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(trainable_parameters(run.model), cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, correct, margin = ctx.all_reduce_sum(sums)
    tokens = sum(samples[i].n_tokens for i in indices)
    return loss_sum / step_labels, correct / step_labels, margin / step_labels, tokens


@torch.no_grad()
def _evaluate(run: _Run, indices) -> EvalSums:
    """Mean loss, token accuracy, answer accuracy (DPO: preference accuracy twice) and reward margin over
    validation examples (shared out between processes)."""
    cfg, ctx, samples = run.config, run.ctx, run.valid
    mine = shard(list(indices), samples, ctx.rank, ctx.world_size)
    sums = [0.0] * 6  # loss, correct tokens, labels, exact answers, examples, margins
    run.model.eval()
    for group in micro_batches(mine, samples, cfg.micro_batch_tokens, cfg.micro_batch_size, cfg.share_prefix):
        with run.governor, run.autocast():
            out = run.packed(run.pack([samples[j] for j in group]).to(ctx.device))
        values = (out.loss.item(), out.correct.item(), out.labels, out.exact.item(), out.examples, float(out.margin))
        for k, value in enumerate(values):
            sums[k] += value
    run.model.train()
    loss, correct, labels, exact, examples, margin = ctx.all_reduce_sum(sums)
    return EvalSums(
        safe_ratio(loss, labels), safe_ratio(correct, labels), safe_ratio(exact, examples), safe_ratio(margin, labels)
    )


# -- setup ------------------------------------------------------------------------------------------
def _setup(config: TrainConfig, ctx: DistContext, settings: Settings) -> _Run:
    model, tokenizer, entry = build_model(config, settings, ctx.device)
    if ctx.device.type == "cpu":
        configure_cpu_threads(ctx.local_world_size, settings.num_threads)  # load_model claimed every core
    resume = _resume_folder(config)
    train_file, hp, train_samples, valid_samples = _setup_data(config, tokenizer, entry.context_length)
    governor = ThreadGovernor(torch.get_num_threads(), torch.set_num_threads, adaptive=settings.adaptive_threads
                              and ctx.device.type == "cpu" and ctx.local_world_size == 1)  # fmt: skip
    packed = PackedCausalLM(model, between_layers=governor.check if governor.adaptive else None)
    if config.objective == "dpo":  # before any step (and before a resume loads trained weights)
        args = (config.micro_batch_tokens, ctx, config.share_prefix, config.start_from is None)
        train_samples = with_reference(packed, train_samples, *args)
        valid_samples = with_reference(packed, valid_samples, *args)
    per_epoch = steps_per_epoch(len(train_samples), hp.batch_size)
    total = per_epoch * hp.n_epochs
    optimizer, scheduler = _setup_optimizer(model, config, hp, total)
    meta = {
        "config": config.model_dump(mode="json"),
        "hyperparameters": hp.model_dump(),
        "base_model": {"name": entry.name, "path": str(entry.path), "architecture": entry.architecture},
        "n_examples": train_file,
        "n_trained_examples": len(train_samples),
        "n_validation_examples": len(valid_samples),
        "steps_per_epoch": per_epoch,
        "total_steps": total,
        "trained_tokens": hp.n_epochs * sum(s.n_tokens for s in train_samples),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "threads": torch.get_num_threads(),
    }
    run = _Run(
        config=config,
        hp=hp,
        ctx=ctx,
        model=model,
        module=ctx.wrap(DPOLoss(packed, hp.beta or 0.0) if config.objective == "dpo" else packed),
        tokenizer=tokenizer,
        train=train_samples,
        valid=valid_samples,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=total,
        steps_per_epoch=per_epoch,
        meta=meta,
        csv=MetricsCSV(config.output_dir / "metrics.csv"),
        governor=governor,
    )
    if resume is not None:
        _restore(run, resume)
    if ctx.is_main:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(config.output_dir / RESOLVED_CONFIG, json.dumps(meta, indent=2))
        run.csv.start(keep_until_step=run.step)
    ctx.barrier()
    return run


def _setup_data(
    config: TrainConfig, tokenizer, context_length: int
) -> tuple[int, ResolvedHyperparameters, list[Packable], list[Packable]]:
    """Render both files with the shared renderer; resolve "auto" from the training file's size."""
    renderer = ChatRenderer(tokenizer)
    fmt, examples = load_examples(config.training_file)
    _check_format(config, fmt, config.training_file)
    answers = AnswerProfile()
    for example in examples:
        answers.add(final_answer(example))
    hp = resolve_hyperparameters(config, len(examples), context_length, answers.n_labels)
    train_samples = _samples(config, renderer, examples, hp.max_length)
    if not train_samples:
        raise TuneloopError(f"{config.training_file}: no example has a trained token (assistant text) to learn from")
    valid_samples: list[Packable] = []
    if config.validation_file is not None:
        fmt, valid_examples = load_examples(config.validation_file)
        _check_format(config, fmt, config.validation_file)
        valid_samples = _samples(config, renderer, valid_examples, hp.max_length)
    return len(examples), hp, train_samples, valid_samples


def _check_format(config: TrainConfig, fmt: Format, path: Path) -> None:
    """A DPO run needs preference pairs; a supervised one chat or prompt/completion examples."""
    dpo = config.objective == "dpo"
    if dpo != (fmt == "preference"):
        needs = "preference (input / preferred_output / non_preferred_output)" if dpo else "chat or prompt/completion"
        raise TuneloopError(f"{path}: a {config.objective} run needs {needs} examples, not the {fmt} format")


def _samples(config: TrainConfig, renderer: ChatRenderer, examples: list, max_length: int) -> list[Packable]:
    """Rendered examples reduced to what the loss needs (those without a trained token dropped)."""
    if config.objective == "dpo":
        return [p for c, r in render_preferences(renderer, examples, max_length) if (p := to_pair(c, r))]
    return [s for r in render_examples(renderer, examples, max_length) if (s := to_sample(r))]


def _setup_optimizer(model: nn.Module, config: TrainConfig, hp: ResolvedHyperparameters, total_steps: int):
    """AdamW over the trainable parameters (fused kernel), linear warm-up then linear decay to 0."""
    params = trainable_parameters(model)
    try:
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=config.weight_decay, foreach=True)
    warmup = math.ceil(config.warmup_ratio * total_steps)

    def factor(done: int) -> float:
        if done < warmup:
            return (done + 1) / (warmup + 1)
        return max(0.0, (total_steps - done) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resume_folder(config: TrainConfig) -> Path | None:
    if config.resume_from is None:
        return None
    if config.resume_from == "latest":
        return ckpt.latest_checkpoint(config.output_dir / "checkpoints")  # none yet: start from scratch
    return Path(config.resume_from)


def _restore(run: _Run, folder: Path) -> None:
    """Continue from a checkpoint: weights, optimizer, scheduler, step, data order, RNG."""
    state = ckpt.read_trainer_state(folder)
    saved = ckpt.read_meta(folder)[ckpt.RESOLVED_KEY]
    known = lambda hp: {k: v for k, v in hp.items() if v is not None}  # noqa: E731  (fields added since: None)
    same_numbers = known(saved["hyperparameters"]) == known(run.hp.model_dump())
    same_numbers = same_numbers and saved["total_steps"] == run.total_steps
    if not same_numbers or state[ckpt.N_TRAINED_EXAMPLES_KEY] != len(run.train):
        raise TuneloopError(f"{folder}: checkpoint of a different run (other data or hyperparameters)")
    load_weights(run.model, folder, run.config.method)
    run.optimizer.load_state_dict(state[ckpt.OPTIMIZER_KEY])
    run.scheduler.load_state_dict(state[ckpt.SCHEDULER_KEY])
    run.step, run.elapsed = state[ckpt.STEP_KEY], state[ckpt.ELAPSED_KEY]
    run.orders = {state[ckpt.EPOCH_KEY]: state[ckpt.EPOCH_ORDER_KEY]}
    ckpt.set_rng_state(state[ckpt.RNG_KEY])
    best = state.get(ckpt.BEST_KEY)
    run.best = BestEpoch.model_validate(best) if best else None
    run.checkpoints = ckpt.list_checkpoints(folder.parent)


# -- outputs ----------------------------------------------------------------------------------------
def _checkpoint(run: _Run, epoch: int, metrics: StepMetrics, callbacks: TrainCallbacks) -> None:
    if run.ctx.is_main:
        state = {
            ckpt.STEP_KEY: run.step,
            ckpt.EPOCH_KEY: epoch,
            ckpt.ELAPSED_KEY: run.elapsed,
            ckpt.TOTAL_STEPS_KEY: run.total_steps,
            ckpt.N_TRAINED_EXAMPLES_KEY: len(run.train),
            ckpt.OPTIMIZER_KEY: run.optimizer.state_dict(),
            ckpt.SCHEDULER_KEY: run.scheduler.state_dict(),
            ckpt.EPOCH_ORDER_KEY: run.order(epoch),
            ckpt.RNG_KEY: ckpt.rng_state(),
            ckpt.BEST_KEY: run.best.model_dump() if run.best else None,
        }
        meta = {
            ckpt.STEP_KEY: run.step,
            ckpt.EPOCH_KEY: epoch,
            ckpt.METRICS_KEY: metrics.model_dump(),
            ckpt.RESOLVED_KEY: run.meta,
        }
        root = run.config.output_dir / "checkpoints"
        path = ckpt.write_checkpoint(
            root,
            run.step,
            lambda folder: save_weights(run.model, run.tokenizer, folder, run.config.method),
            state,
            meta,
            run.config.keep_checkpoints,
        )
        run.checkpoints = ckpt.list_checkpoints(root)
        if callbacks.on_checkpoint:
            callbacks.on_checkpoint(CheckpointInfo(step=run.step, epoch=epoch, path=path, metrics=metrics))
    run.ctx.barrier()


def _keep_if_best(run: _Run, candidate: BestEpoch) -> None:
    """Remember the best epoch so far and keep its weights in output_dir/best (the last epoch's are saved anyway)."""
    if not candidate.beats(run.best):
        return
    run.best = candidate
    if run.ctx.is_main and candidate.step < run.total_steps:
        best = run.config.output_dir / BEST_DIR
        ckpt.clear_leftovers(best)
        with atomic_path(best, directory=True) as tmp:
            save_weights(run.model, run.tokenizer, tmp, run.config.method)


def _report_step(run: _Run, metrics: StepMetrics, callbacks: TrainCallbacks) -> None:
    if run.ctx.is_main:
        run.csv.append(metrics)
        if callbacks.on_step:
            callbacks.on_step(metrics)


def _finish(run: _Run, metrics: StepMetrics | None) -> TrainResult:
    """Write the final adapter/model folder (atomically) and return the result."""
    out = run.config.output_dir / ("adapter" if run.config.method == "lora" else "model")
    best = run.config.output_dir / BEST_DIR
    earlier = run.best is not None and run.best.step < run.step and best.is_dir()
    if run.ctx.is_main:
        ckpt.clear_leftovers(out)
        with atomic_path(out, directory=True) as tmp:
            if earlier:
                shutil.copytree(best, tmp, dirs_exist_ok=True)
            else:
                save_weights(run.model, run.tokenizer, tmp, run.config.method)
        shutil.rmtree(best, ignore_errors=True)
    run.ctx.barrier()
    return _result(run, metrics, stopped=False, weights=out)


def _result(run: _Run, metrics: StepMetrics | None, stopped: bool, weights: Path | None = None) -> TrainResult:
    out = run.config.output_dir
    return TrainResult(
        output_dir=out,
        weights_path=weights,
        method=run.config.method,
        objective=run.config.objective,
        hyperparameters=run.hp,
        total_steps=run.total_steps,
        steps_done=run.step,
        trained_tokens=_tokens_done(run, run.step),
        final_metrics=metrics,
        metrics_csv=run.csv.path,
        resolved_config=out / RESOLVED_CONFIG,
        checkpoints=run.checkpoints,
        stopped=stopped,
        best_epoch=run.best if run.config.select_best_epoch else None,
    )


# -- small rules ------------------------------------------------------------------------------------
def _accuracy_fields(run: _Run, prefix: str, accuracy: float, margin: float) -> dict[str, float]:
    """The metrics an accuracy names: token accuracy, or DPO's preference accuracy and reward margin."""
    if run.dpo:
        return {f"{prefix}_preference_accuracy": accuracy, f"{prefix}_reward_margin": margin}
    return {f"{prefix}_mean_token_accuracy": accuracy}


def _with_validation(run: _Run, metrics: StepMetrics, prefix: str, result: EvalSums) -> StepMetrics:
    """``metrics`` with a validation result (``valid`` window or ``full_valid`` file) filled in."""
    update = {f"{prefix}_loss": result.loss, **_accuracy_fields(run, prefix, result.accuracy, result.margin)}
    if prefix == "full_valid" and not run.dpo:
        update["full_valid_answer_accuracy"] = result.answer_accuracy
    return metrics.model_copy(update=update)


def _tokens_done(run: _Run, step: int) -> int:
    """Tokens processed after ``step`` steps (whole epochs, plus the batches of the current one)."""
    epochs, index = divmod(step, run.steps_per_epoch)
    per_epoch = sum(s.n_tokens for s in run.train)
    partial = sum(run.train[i].n_tokens for i in run.order(epochs + 1)[: index * run.hp.batch_size]) if index else 0
    return epochs * per_epoch + partial


def _eval_every(run: _Run) -> int:
    return run.config.eval_every or max(1, run.total_steps // 10)


def _valid_window(run: _Run, step: int) -> list[int]:
    """The validation batch for ``step``: the next ``batch_size`` validation examples, cycling."""
    n = len(run.valid)
    start = (step // _eval_every(run)) * run.hp.batch_size
    return sorted({(start + k) % n for k in range(min(run.hp.batch_size, n))})


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63)
