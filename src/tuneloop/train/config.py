"""The training configuration (one typed object) and the rules that resolve its ``"auto"`` values.

Epochs for ``"auto"`` follow OpenAI's published heuristic, shared with the data validator. Batch
size and learning rate follow the rule in ``resolve_batch_size`` / ``resolve_learning_rate_multiplier``;
``benchmarks/sweep_auto_hparams.py`` is the sweep on Snips that checks it (see its README section).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tuneloop.data.estimate import auto_epochs
from tuneloop.train.hyperparameters import BatchSize, Beta, Epochs, LearningRateMultiplier

#: Learning rate at ``learning_rate_multiplier == 1`` for each method (AdamW).
BASE_LEARNING_RATE = {"lora": 1e-4, "full": 1e-5}
#: Longest sequence trained when ``max_length`` is not given (and the model allows it).
DEFAULT_MAX_LENGTH = 2048
#: DPO's ``beta`` for ``"auto"``: the DPO paper's and TRL's default.
DEFAULT_BETA = 0.1


class TrainConfig(BaseModel):
    """Everything one fine-tuning run needs; ``"auto"`` values are resolved from the data."""

    model: str = Field(description="Base model: a catalog name (see `tuneloop models list`).")
    training_file: Path = Field(
        description="JSONL training file: chat or prompt/completion format (supervised), preference format (dpo)."
    )
    validation_file: Path | None = Field(default=None, description="Optional JSONL file for validation metrics.")
    output_dir: Path = Field(description="Folder for the adapter/model, checkpoints, metrics.csv and the config.")
    start_from: Path | None = Field(
        default=None,
        description="Weights of an earlier run of `model` to start from (e.g. SFT, then DPO): a LoRA adapter folder "
        "(trained further, or merged into the weights first for `full`) or a full model folder (`full` only). "
        "DPO's reference model is then these weights.",
    )
    method: Literal["lora", "full"] = Field(
        default="lora", description="`lora` trains low-rank adapters; `full` trains every weight."
    )
    objective: Literal["supervised", "dpo"] = Field(
        default="supervised",
        description="OpenAI's method.type: `supervised` (cross-entropy on the assistant tokens) or `dpo` "
        "(direct preference optimisation on preferred / non-preferred pairs).",
    )
    beta: Beta = Field(
        default="auto",
        description=f"DPO's beta (above 0, at most 2): how far the policy may move from the reference; "
        f"`auto` = {DEFAULT_BETA}. Ignored for supervised runs.",
    )
    n_epochs: Epochs = Field(default="auto", description="Passes over the training file (1-50), or `auto`.")
    batch_size: BatchSize = Field(default="auto", description="Examples per optimizer step (1-256), or `auto`.")
    learning_rate_multiplier: LearningRateMultiplier = Field(
        default="auto",
        description="Scales the method's base learning rate (LoRA 1e-4, full 1e-5; at most 100), or `auto`.",
    )
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(default=32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear", description="Module names that get adapters, or `all-linear` (every linear but lm_head)."
    )
    max_length: int | None = Field(
        default=None,
        ge=2,
        description=f"Examples are truncated to this many tokens; default min(model context, {DEFAULT_MAX_LENGTH}).",
    )
    seed: int = Field(default=42, description="Seed for adapter initialisation, data order and dropout.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(default=1.0, description="Clip the gradient norm to this; None: no clipping.")
    warmup_ratio: float = Field(
        default=0.05, ge=0, le=1, description="Fraction of steps with a linear warm-up; then linear decay to 0."
    )
    micro_batch_tokens: int = Field(
        default=1024,
        ge=16,
        description="Most tokens computed in one forward pass (after prefix sharing); larger batches accumulate.",
    )
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="Most examples in one forward pass; None: limited by tokens only."
    )
    share_prefix: bool = Field(
        default=True, description="Compute the prefix that a micro-batch's examples share (a system prompt) once."
    )
    eval_every: int | None = Field(
        default=None, ge=1, description="Steps between validation-batch metrics; None: about 10 times per run."
    )
    full_validation: bool = Field(
        default=True, description="Compute full_valid_loss over the whole validation file at the end."
    )
    select_best_epoch: bool = Field(
        default=True,
        description="With a validation file, the final model is the epoch with the best full-validation answer "
        "accuracy (ties: the lower loss), not necessarily the last.",
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="Epoch checkpoints kept (the newest).")
    resume_from: Path | Literal["latest"] | None = Field(
        default=None, description="Checkpoint folder to continue from, or `latest` in output_dir/checkpoints."
    )
    device: str | None = Field(default=None, description="Torch device; None: TUNELOOP_DEVICE (auto: cuda if any).")


class ResolvedHyperparameters(BaseModel):
    """The numbers a run actually uses, and the rule that chose each ``"auto"`` one."""

    n_epochs: int = Field(description="Passes over the training file.")
    batch_size: int = Field(description="Examples per optimizer step.")
    learning_rate_multiplier: float = Field(description="Multiplier of the method's base learning rate.")
    learning_rate: float = Field(description="Peak AdamW learning rate = base x multiplier.")
    max_length: int = Field(description="Examples are truncated to this many tokens.")
    beta: float | None = Field(default=None, description="DPO's beta (None for supervised runs).")
    rules: dict[str, str] = Field(default_factory=dict, description="Why each value was chosen.")


def resolve_batch_size(n_examples: int) -> tuple[int, str]:
    """Batch size for ``"auto"``: about n/32 rounded to a power of two, within [4, 32].

    About 32 optimizer steps per epoch. On Snips (benchmarks/sweep_auto_hparams.py, 128 examples,
    3 epochs) more, smaller steps won at every learning rate: the best held-out loss at batch 4
    (0.076) beat batch 8 (0.095) and batch 16 (0.082 at its best multiplier).
    """
    raw = max(1, n_examples) / 32
    size = int(min(32, max(4, 2 ** round(math.log2(raw))))) if raw >= 1 else 4
    return size, f"{n_examples} examples / 32 rounded to a power of two, within [4, 32] = {size}"


#: Tuned on Snips (benchmarks/sweep_auto_hparams.py): the best LoRA multiplier was 8 at batch 4.
LORA_MULTIPLIER_AT_BATCH_4 = 8.0
LORA_MULTIPLIER_MAX = 16.0


#: DPO's multipliers for ``"auto"`` (LoRA 3e-5, full 1e-6). On benchmarks/dpo_eval.py (bundled model, LoRA, batch 8)
#: the supervised rule's 11.3 collapsed into gibberish, 1.0 learned the preferred format but lost the topic,
#: 0.1 kept the topic but learned almost none of the format.
DPO_MULTIPLIER = {"lora": 0.3, "full": 0.1}


def resolve_learning_rate_multiplier(batch_size: int, method: str, objective: str = "supervised") -> tuple[float, str]:
    """Learning-rate multiplier for ``"auto"``: 8 x sqrt(batch_size / 4), at most 16, for LoRA; 1 for full.

    From the Snips sweep (LoRA r=16, 128 examples, 3 epochs, held-out loss): at batch 4 the
    multipliers 1/2/4/8/16 gave 0.177/0.104/0.082/0.076/0.097 (intent) and 2/8 gave 0.469/0.268
    (slots); at batch 16, 4/8/16 gave 0.184/0.122/0.082. The best multiplier grows with the batch
    like sqrt(batch) (8 at batch 4, 16 at batch 16), the usual square-root scaling.
    """
    if objective == "dpo":
        mult = DPO_MULTIPLIER[method]
        return mult, f"DPO ({method}): {mult}, far below supervised fine-tuning's (benchmarks/dpo_eval.py)"
    if method == "full":
        return 1.0, "full fine-tuning: 1.0 (learning rate 1e-5)"
    mult = round(min(LORA_MULTIPLIER_MAX, LORA_MULTIPLIER_AT_BATCH_4 * math.sqrt(batch_size / 4)), 3)
    return mult, f"LoRA: 8 x sqrt(batch_size {batch_size} / 4), at most 16 = {mult} (tuned on Snips)"


def resolve_hyperparameters(
    config: TrainConfig, n_examples: int, context_length: int, n_labels: int | None = None
) -> ResolvedHyperparameters:
    """Replace every ``"auto"`` in ``config`` by its value for a training file of ``n_examples``
    (a label set of ``n_labels`` distinct answers, or free text when None)."""
    rules: dict[str, str] = {}
    if config.n_epochs == "auto":
        n_epochs, rules["n_epochs"] = auto_epochs(n_examples, n_labels)
    else:
        n_epochs, rules["n_epochs"] = int(config.n_epochs), "given"
    if config.batch_size == "auto":
        batch_size, rules["batch_size"] = resolve_batch_size(n_examples)
    else:
        batch_size, rules["batch_size"] = int(config.batch_size), "given"
    if config.learning_rate_multiplier == "auto":
        mult, rule = resolve_learning_rate_multiplier(batch_size, config.method, config.objective)
        rules["learning_rate_multiplier"] = rule
    else:
        mult, rules["learning_rate_multiplier"] = float(config.learning_rate_multiplier), "given"
    if config.max_length is None:
        max_length = min(context_length, DEFAULT_MAX_LENGTH)
        rules["max_length"] = f"min(model context {context_length}, {DEFAULT_MAX_LENGTH})"
    else:
        max_length, rules["max_length"] = min(config.max_length, context_length), "given (capped at the context)"
    beta = None
    if config.objective == "dpo":
        if config.beta == "auto":
            beta, rules["beta"] = DEFAULT_BETA, f"DPO: {DEFAULT_BETA} (the DPO paper's and TRL's default)"
        else:
            beta, rules["beta"] = float(config.beta), "given"
    lr = BASE_LEARNING_RATE[config.method] * mult
    return ResolvedHyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=mult,
        learning_rate=lr,
        max_length=max_length,
        beta=beta,
        rules=rules,
    )
