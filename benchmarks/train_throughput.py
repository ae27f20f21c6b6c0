"""Training throughput: tuneloop vs TRL's SFTTrainer on the same data, model and hyperparameters.

Trains SmolLM2-135M-Instruct with LoRA (r=16, alpha=32, dropout 0, all linear layers) for one
epoch over the first N examples of Snips ``intent_train.jsonl``, batch 8, AdamW at 2e-4 with a
linear decay (no warm-up: the two libraries' warm-ups differ), loss on the assistant reply only, with

* tuneloop: ``tuneloop.train.train`` (packed batches, shared prompt prefix computed once,
  vocabulary projection at label positions only);
* TRL (fast): ``SFTTrainer`` with prompt/completion data (completion-only loss), ``bf16=False``,
  ``gradient_checkpointing=False``, no packing — its fastest settings on a CPU. Its prompts and
  completions are the text of the same chat template, the completion being the reply and its
  ``<|im_end|>``, and the examples come in tuneloop's order with a sequential sampler, so both arms
  train on the same tokens in the same batches and their losses can be compared;
* TRL (defaults, optional): the same with TRL's defaults (bf16 autocast, gradient checkpointing),
  on fewer examples because it is an order of magnitude slower.

Each arm runs in its own process (so peak RSS is its own) and reports: trained tokens/s (the
examples' tokens, OpenAI's meaning, over the training wall time, model loading excluded), peak
RSS, and the loss after training, evaluated identically for every arm (plain transformers + peft
forward, mean loss over the assistant tokens of the first 64 ``intent_valid.jsonl`` examples).

FLOP accounting: the machine's matmul peak is measured (2048x2048 fp32 on all threads). A plain
implementation does, per example token, a forward and an input-gradient pass through every matmul
(4 x matmul parameters FLOPs; frozen weights need no weight gradient): ``effective`` credits each
arm with that work for every token it trains on; ``executed`` counts what tuneloop actually
computes (the shared prefix once per micro-batch, the vocabulary projection only at labels).

Usage (about 10 minutes on a 2-core laptop; the data path is the repository's sibling shared/)::

    python benchmarks/train_throughput.py                      # tuneloop + TRL fast, 256 examples
    python benchmarks/train_throughput.py --trl-default-examples 16   # also TRL's defaults, 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "snips"
MODEL = "smollm2-135m-instruct"
LR = 2e-4
EVAL_EXAMPLES = 64
SEED = 42


def read_jsonl(path: Path, n: int) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def matmul_flops(threads: int) -> float:
    """Measured fp32 matmul FLOP/s (2048 x 2048 x 2048)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * 2048**3 / best


def model_parts():
    """The base model folder and tokenizer (through the tuneloop catalog, converting once if needed)."""
    from tuneloop.config import get_settings
    from tuneloop.models import Catalog
    from tuneloop.models.loading import load_tokenizer

    catalog = Catalog(get_settings())
    entry = catalog.ensure_ready(catalog.get(MODEL))
    return entry.path, load_tokenizer(entry)


def eval_loss(peft_model, tokenizer) -> float:
    """Mean assistant-token loss on the validation examples with the stock forward (same for every arm)."""
    import torch
    import torch.nn.functional as F

    from tuneloop.data.render import ChatRenderer

    rendered = ChatRenderer(tokenizer).render_many(
        [(r["messages"], None) for r in read_jsonl(DATA / "intent_valid.jsonl", EVAL_EXAMPLES)]
    )
    peft_model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rendered:
            ids = torch.tensor([r.input_ids])
            logits = peft_model(input_ids=ids).logits[0, :-1]
            mask = torch.tensor(r.mask[1:])
            total += F.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum").item()
            count += int(mask.sum())
    return total / count


def example_tokens(tokenizer, rows: list[dict]) -> tuple[int, int]:
    """(tokens of the examples as rendered, tokens trained) — the same count for every arm."""
    from tuneloop.data.render import ChatRenderer

    rendered = ChatRenderer(tokenizer).render_many([(r["messages"], None) for r in rows])
    return sum(len(r.input_ids) for r in rendered), sum(r.n_trained for r in rendered)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def arm_tuneloop(n: int, batch: int, max_length: int, out: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.train import TrainConfig, train

    folder, tokenizer = model_parts()
    rows = read_jsonl(DATA / "intent_train.jsonl", n)
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = TrainConfig(
        model=MODEL,
        training_file=data,
        output_dir=out / "run",
        n_epochs=1,
        batch_size=batch,
        learning_rate_multiplier=LR / 1e-4,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        max_length=max_length,
        warmup_ratio=0.0,
        seed=SEED,
        device="cpu",
    )
    result = train(config)
    seconds = result.final_metrics.elapsed_seconds
    tokens, trained = example_tokens(tokenizer, rows)
    executed = executed_flops(config, tokenizer, rows)
    rss = peak_rss_gb()
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), result.weights_path
    )
    return {
        "arm": "tuneloop",
        "seconds": seconds,
        "tokens": tokens,
        "trained_tokens": trained,
        "peak_rss_gb": rss,
        "final_train_loss": result.final_metrics.train_loss,
        "eval_loss": eval_loss(model, tokenizer),
        "executed_flops": executed,
        "steps": result.steps_done,
    }


def executed_flops(config, tokenizer, rows: list[dict]) -> float:
    """FLOPs tuneloop's plan computes: 4 x layer params per computed token, 4 x head params per label."""
    from tuneloop.data.render import ChatRenderer
    from tuneloop.train.batching import (
        batch_indices,
        computed_tokens,
        epoch_order,
        micro_batches,
        steps_per_epoch,
        to_sample,
    )

    layer_params, head_params = matmul_params()
    rendered = ChatRenderer(tokenizer).render_many([(r["messages"], None) for r in rows])
    samples = [s for r in rendered if (s := to_sample(r.truncated(config.max_length)))]
    order = epoch_order(len(samples), config.seed, 1)
    total = 0.0
    for step in range(steps_per_epoch(len(samples), config.batch_size)):
        indices = batch_indices(order, config.batch_size, step)
        for group in micro_batches(indices, samples, config.micro_batch_tokens, None, config.share_prefix):
            group_samples = [samples[i] for i in group]
            total += 4 * layer_params * computed_tokens(group_samples, config.share_prefix)
            total += 4 * head_params * sum(s.n_labels for s in group_samples)
    return total


def matmul_params() -> tuple[int, int]:
    """(parameters of the decoder layers' matmuls, of the vocabulary projection) of SmolLM2-135M."""
    from transformers import AutoConfig

    folder, _ = model_parts()
    c = AutoConfig.from_pretrained(folder)
    head_dim = c.hidden_size // c.num_attention_heads
    attn = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (attn + mlp), c.hidden_size * c.vocab_size


def arm_trl(n: int, batch: int, max_length: int, out: Path, fast: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tuneloop.data.render import ChatRenderer
    from tuneloop.train.batching import epoch_order

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    folder, tokenizer = model_parts()
    rows = read_jsonl(DATA / "intent_train.jsonl", n)
    # The same token sequences and trained tokens as tuneloop (the chat template's text, loss on the
    # reply and its <|im_end|>), in tuneloop's order, so both see the same batches at each step.
    renderer = ChatRenderer(tokenizer)
    pairs = []
    for i in epoch_order(len(rows), SEED, 1):
        messages = rows[i]["messages"]
        prompt = renderer.text(messages[:-1], add_generation_prompt=True)
        pairs.append({"prompt": prompt, "completion": renderer.text(messages)[len(prompt) :].rstrip("\n")})
    dataset = Dataset.from_list(pairs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    speed = {"bf16": False, "gradient_checkpointing": False} if fast else {}
    args = SFTConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=max_length,
        packing=False,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=SEED,
        train_sampling_strategy="sequential",
        **speed,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(SEED)  # the LoRA initialisation draws the same numbers as tuneloop's
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens, trained = example_tokens(tokenizer, rows)
    rss = peak_rss_gb()
    return {
        "arm": "trl-fast" if fast else "trl-defaults",
        "seconds": seconds,
        "tokens": tokens,
        "trained_tokens": trained,
        "peak_rss_gb": rss,
        "final_train_loss": losses[-1] if losses else float("nan"),
        "eval_loss": eval_loss(trainer.model, tokenizer) if fast else float("nan"),
        "steps": trainer.state.global_step,
    }


def run_arm(arm: str, n: int, args: argparse.Namespace) -> dict:
    """Run one arm in a fresh process and return its measurements."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--arm", arm, "--examples", str(n), "--batch-size", str(args.batch_size)]
        cmd += ["--max-length", str(args.max_length), "--result", str(result_file), "--workdir", tmp]
        print(f"running {arm} on {n} examples...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--trl-default-examples", type=int, default=0, help="Also time TRL's defaults on N examples.")
    parser.add_argument("--arms", default="tuneloop,trl-fast")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm:  # child process: one arm
        out = Path(args.workdir)
        if args.arm == "tuneloop":
            res = arm_tuneloop(args.examples, args.batch_size, args.max_length, out)
        else:
            res = arm_trl(args.examples, args.batch_size, args.max_length, out, fast=args.arm == "trl-fast")
        Path(args.result).write_text(json.dumps(res))
        return

    peak = matmul_flops(len(os.sched_getaffinity(0)))
    layer_params, head_params = matmul_params()
    per_token = 4 * (layer_params + head_params)
    results = [run_arm(arm, args.examples, args) for arm in args.arms.split(",")]
    if args.trl_default_examples:
        results.append(run_arm("trl-defaults", args.trl_default_examples, args))

    print(
        f"\nSmolLM2-135M LoRA r=16 all-linear, batch {args.batch_size}, Snips intent, 1 epoch; cores: "
        f"{len(os.sched_getaffinity(0))}; matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    head = f"{'arm':<14}{'examples':>9}{'tokens/s':>10}{'peak RSS':>10}{'train loss':>11}{'eval loss':>10}"
    head += f"{'effective':>11}{'executed':>10}"
    print(head)
    print("-" * len(head))
    for r in results:
        tps = r["tokens"] / r["seconds"]
        effective = per_token * tps / peak
        executed = r.get("executed_flops", per_token * r["tokens"]) / r["seconds"] / peak
        n = args.trl_default_examples if r["arm"] == "trl-defaults" else args.examples
        print(
            f"{r['arm']:<14}{n:>9}{tps:>10.1f}{r['peak_rss_gb']:>8.2f}GB{r['final_train_loss']:>11.4f}"
            f"{r['eval_loss']:>10.4f}{effective:>10.0%}{executed:>10.0%}"
        )
    by_arm = {r["arm"]: r for r in results}
    if "tuneloop" in by_arm and "trl-fast" in by_arm:
        ours, trl = by_arm["tuneloop"], by_arm["trl-fast"]
        speed = (ours["tokens"] / ours["seconds"]) / (trl["tokens"] / trl["seconds"])
        memory = ours["peak_rss_gb"] / trl["peak_rss_gb"]
        loss = abs(ours["eval_loss"] - trl["eval_loss"]) / trl["eval_loss"]
        print(
            f"\ntuneloop / TRL (fast): {speed:.2f}x tokens/s (target >= 3x), {memory:.2f}x peak RSS (target <= 0.6x), "
            f"eval loss differs by {loss:.1%} (target <= 2%)"
        )


if __name__ == "__main__":
    main()
