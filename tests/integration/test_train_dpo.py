"""DPO on the tiny model: it learns a held-out preference, resumes exactly, and refuses files of the wrong format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.train import TrainCallbacks, TrainConfig, train
from tuneloop.train.metrics import DPO_COLUMNS, MetricsCSV

from helpers import chat_jsonl, run_cli

ALIVE, THINGS = ["cat", "dog", "horse"], ["table", "chair", "lamp"]
FILLERS = ["is", "the", "a", "my", "small", "big", "red", "blue", "old", "new", "here", "there", "today"]


def preference_pairs(n: int, seed: int) -> list[dict]:
    """Is it alive? Prefer "Yes." for an animal and "No." for a thing (half each): a rule only the prompt tells."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        alive = i % 2 == 0
        words = [rng.choice(ALIVE if alive else THINGS)] + [rng.choice(FILLERS) for _ in range(3)]
        good, bad = ("Yes.", "No.") if alive else ("No.", "Yes.")
        rows.append({
            "input": {"messages": [{"role": "system", "content": "Is it alive?"},
                                   {"role": "user", "content": " ".join(words)}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}],
        })  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def policy_accuracy(model_dir: Path, valid: Path) -> float:
    """Fraction of pairs whose preferred reply the model itself finds more likely (no reference): ~50% for a
    model that ignores the prompt, since the classes are balanced."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.data.examples import load_examples, render_preferences
    from tuneloop.data.render import ChatRenderer
    from tuneloop.train.dpo import score_pairs
    from tuneloop.train.packed import PackedCausalLM
    from tuneloop.train.pairs import to_pair

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    _, examples = load_examples(valid)
    pairs = [p for c, r in render_preferences(ChatRenderer(tokenizer), examples) if (p := to_pair(c, r))]
    scores = score_pairs(PackedCausalLM(model), pairs, 1024, model.device)
    return (scores[:, 0] > scores[:, 1]).double().mean().item()


def test_dpo_learns_a_held_out_preference_from_chance(tmp_path: Path, tiny_model: str, tiny_model_dir: Path) -> None:
    """Full fine-tuning (the reference log-probabilities cached before the first step), beta auto."""
    train_file = write_jsonl(tmp_path / "train.jsonl", preference_pairs(64, seed=0))
    valid_file = write_jsonl(tmp_path / "valid.jsonl", preference_pairs(32, seed=1))
    before = policy_accuracy(tiny_model_dir, valid_file)
    assert 0.3 <= before <= 0.7
    steps: list = []
    config = TrainConfig(model=tiny_model, training_file=train_file, validation_file=valid_file,
                         output_dir=tmp_path / "run", method="full", objective="dpo", n_epochs=6, batch_size=8,
                         learning_rate_multiplier=100.0)  # fmt: skip
    result = train(config, TrainCallbacks(on_step=steps.append), settings=get_settings())
    assert result.objective == "dpo" and result.hyperparameters.beta == 0.1
    assert result.hyperparameters.rules["beta"].startswith("DPO: 0.1")
    first, last = steps[0], steps[-1]
    assert first.train_loss == pytest.approx(0.6931, abs=2e-3)  # log 2: the policy starts as the reference
    assert first.train_preference_accuracy == pytest.approx(0.5, abs=0.13) and first.train_mean_token_accuracy is None
    epochs = [m.full_valid_preference_accuracy for m in steps if m.full_valid_preference_accuracy is not None]
    assert len(epochs) == 6 and epochs[0] <= 0.75 and max(epochs) >= 0.9
    assert last.full_valid_reward_margin > 0 and last.train_reward_margin > 0
    assert result.best_epoch is not None and result.best_epoch.answer_accuracy == max(epochs)
    assert policy_accuracy(result.weights_path, valid_file) >= 0.9  # the model itself now prefers the right reply
    row = MetricsCSV(result.metrics_csv).read()[-1]
    assert set(DPO_COLUMNS) <= set(row) and row["full_valid_preference_accuracy"] == last.full_valid_preference_accuracy
    assert row["train_accuracy"] == last.train_preference_accuracy


def dpo_config(tmp_path: Path, model: str, name: str, **kw) -> TrainConfig:
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        write_jsonl(data, preference_pairs(16, seed=2))
    settings = {"training_file": data, "objective": "dpo", "beta": 0.5, "n_epochs": 2, "batch_size": 4,
                "learning_rate_multiplier": 50.0, "lora_r": 4, "lora_dropout": 0.1,
                "micro_batch_tokens": 64}  # fmt: skip
    return TrainConfig(model=model, output_dir=tmp_path / name, **{**settings, **kw})


def test_a_stopped_lora_dpo_run_resumes_exactly(tmp_path: Path, tiny_model: str) -> None:
    """LoRA (reference: the adapter disabled), micro-batches accumulated, dropout: a stop after step 3 and a
    resume give the uninterrupted run's losses and margins."""
    whole = train(dpo_config(tmp_path, tiny_model, "whole"))
    assert whole.total_steps == 8 and whole.weights_path is not None and whole.weights_path.name == "adapter"
    calls = {"n": 0}

    def stop_after_3() -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    stopped = train(dpo_config(tmp_path, tiny_model, "parts"), should_stop=stop_after_3)
    assert stopped.stopped and stopped.steps_done == 3
    resumed = train(dpo_config(tmp_path, tiny_model, "parts", resume_from="latest"))
    assert resumed.steps_done == 8
    rows = [MetricsCSV(r.metrics_csv).read() for r in (whole, resumed)]
    for key in ("train_loss", "train_reward_margin", "train_preference_accuracy"):
        assert [r[key] for r in rows[1]] == pytest.approx([r[key] for r in rows[0]], abs=1e-6)
    assert rows[0][0]["train_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert rows[0][-1]["train_loss"] < rows[0][0]["train_loss"]


def test_a_file_of_the_other_format_is_refused(tmp_path: Path, tiny_model: str) -> None:
    chat = Path(chat_jsonl(tmp_path / "chat.jsonl", 12))
    with pytest.raises(TuneloopError, match="a dpo run needs preference"):
        train(dpo_config(tmp_path, tiny_model, "dpo-on-chat", training_file=chat))
    with pytest.raises(TuneloopError, match="a supervised run needs chat or prompt/completion examples"):
        train(dpo_config(tmp_path, tiny_model, "sft-on-pairs", objective="supervised"))


def test_tuneloop_train_method_dpo(tmp_path: Path, tiny_model: str) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(12, seed=3))
    out = tmp_path / "cli-run"
    done = run_cli("train", "--model", tiny_model, "--train", str(data), "--valid", str(data), "--out", str(out),
                   "--method", "dpo", "--beta", "0.2", "--epochs", "1", "--batch-size", "4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "adapter") and "preference accuracy" in done.stderr
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["config"]["objective"] == "dpo" and resolved["hyperparameters"]["beta"] == 0.2
    refused = run_cli("train", "--model", tiny_model, "--train", str(data), "--out", str(tmp_path / "x"),
                      "--beta", "0.2")  # fmt: skip
    assert refused.returncode == 2 and "--beta" in refused.stderr
    out_of_range = run_cli("train", "--model", tiny_model, "--train", str(data), "--out", str(tmp_path / "y"),
                           "--method", "dpo", "--beta", "5")  # fmt: skip
    assert out_of_range.returncode == 2
    assert "Invalid value for 'beta': must be 'auto' or a number greater than 0 and at most 2" in out_of_range.stderr


def supervised_yes_adapter(tmp_path: Path, tiny_model: str) -> Path:
    """A LoRA adapter fine-tuned to answer "Yes." to everything (so it is far from the base model)."""
    rows = [{"messages": [*p["input"]["messages"], {"role": "assistant", "content": "Yes."}]}
            for p in preference_pairs(16, seed=4)]  # fmt: skip
    config = TrainConfig(model=tiny_model, training_file=write_jsonl(tmp_path / "sft.jsonl", rows),
                         output_dir=tmp_path / "sft", n_epochs=3, batch_size=4, learning_rate_multiplier=50.0,
                         lora_r=4)  # fmt: skip
    return train(config).weights_path


def pair_scores(config: TrainConfig, adapter_on: bool):
    """Summed reply log-probs of the DPO file's pairs under the model ``build_model`` starts the run from."""
    import contextlib

    import torch

    from tuneloop.data.examples import load_examples, render_preferences
    from tuneloop.data.render import ChatRenderer
    from tuneloop.train.dpo import score_pairs
    from tuneloop.train.modeling import build_model
    from tuneloop.train.packed import PackedCausalLM
    from tuneloop.train.pairs import to_pair

    model, tokenizer, _ = build_model(config, get_settings(), torch.device("cpu"))
    _, examples = load_examples(config.training_file)
    pairs = [p for c, r in render_preferences(ChatRenderer(tokenizer), examples) if (p := to_pair(c, r))]
    with contextlib.nullcontext() if adapter_on else model.disable_adapter():
        return score_pairs(PackedCausalLM(model), pairs, 1024, torch.device("cpu"))


def test_dpo_from_a_supervised_adapter_uses_it_as_the_reference(tmp_path: Path, tiny_model: str) -> None:
    """SFT, then DPO (OpenAI's order): the run continues the SFT adapter (its rank, not the config's), and the
    reference is the SFT model, so the first step's loss is log 2 although the SFT model is far from the base
    (without dropout: the adapter is no longer zero, so dropout on its input moves the policy)."""
    sft = supervised_yes_adapter(tmp_path, tiny_model)
    config = dpo_config(tmp_path, tiny_model, "dpo-after-sft", start_from=sft, lora_r=16, lora_dropout=0.0)
    shift = (pair_scores(config, adapter_on=True) - pair_scores(config, adapter_on=False)).abs()
    assert shift.mean() > 0.5  # nats: a reference of the base model would make the first loss far from log 2
    steps: list = []
    result = train(config, TrainCallbacks(on_step=steps.append))
    assert steps[0].train_loss == pytest.approx(0.6931, abs=2e-3)
    assert steps[0].train_reward_margin == pytest.approx(0, abs=1e-4)
    assert json.loads((result.weights_path / "adapter_config.json").read_text())["r"] == 4
    from safetensors.torch import load_file

    before, after = (load_file(str(p / "adapter_model.safetensors")) for p in (sft, result.weights_path))
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)


def test_a_full_run_from_a_supervised_adapter_starts_from_the_merged_weights(tmp_path: Path, tiny_model: str) -> None:
    sft = supervised_yes_adapter(tmp_path, tiny_model)
    steps: list = []
    result = train(dpo_config(tmp_path, tiny_model, "full-after-sft", start_from=sft, method="full", n_epochs=1,
                              learning_rate_multiplier=10.0), TrainCallbacks(on_step=steps.append))  # fmt: skip
    assert steps[0].train_loss == pytest.approx(0.6931, abs=2e-3) and result.weights_path.name == "model"
    with pytest.raises(TuneloopError, match="trains every weight"):  # LoRA on a full model's weights
        train(dpo_config(tmp_path, tiny_model, "lora-after-full", start_from=result.weights_path))
