"""The training engine on the tiny model: what is trained, the packed computation, accumulation, outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuneloop.config import get_settings
from tuneloop.train import TrainCallbacks, TrainConfig, train
from tuneloop.train.batching import pack, to_sample

SYSTEM = "Classify the request. Answer with exactly one label from: Music, Weather, Books, Food, Travel."
WORDS = [
    "play",
    "some",
    "jazz",
    "what",
    "is",
    "the",
    "weather",
    "in",
    "paris",
    "tomorrow",
    "rate",
    "this",
    "novel",
    "five",
    "stars",
    "book",
    "a",
    "table",
    "for",
    "two",
]
LABELS = ["Music", "Weather", "Books", "Food", "Travel"]


def conversations(n: int, seed: int = 0, long_answers: bool = False) -> list[dict]:
    """Chat examples sharing one system prompt, with user texts (and, optionally, answers) of varied length."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))
        answer = rng.choice(LABELS)
        if long_answers:  # examples then carry different numbers of trained tokens
            answer += "".join(" " + rng.choice(WORDS) for _ in range(rng.randint(0, 6)))
        out.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_parts(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.data.render import ChatRenderer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer, ChatRenderer(tokenizer)


def reference_loss(model, rendered) -> torch.Tensor:
    """Mean loss over trained tokens, one example at a time, with the stock Hugging Face forward."""
    total, count = torch.zeros(()), 0
    for r in rendered:
        ids = torch.tensor([r.input_ids])
        logits = model(ids).logits[0, :-1]
        mask = torch.tensor(r.mask[1:])
        total = total + F.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum")
        count += int(mask.sum())
    return total / count


def lora(model, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    for name, p in peft_model.named_parameters():  # non-zero B so the adapters change the output
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return peft_model


def test_loss_targets_are_exactly_the_assistant_turns(tiny_model_dir: Path) -> None:
    _, tokenizer, renderer = tiny_parts(tiny_model_dir)
    base = conversations(1)[0]["messages"]
    other_user = [base[0], {"role": "user", "content": "a completely different question"}, base[2]]
    a, b = (to_sample(renderer.render(m)) for m in (base, other_user))
    assert a is not None and b is not None
    # changing the user's text leaves the loss targets unchanged
    assert a.targets == b.targets
    assert tokenizer.decode(list(a.targets)) == base[2]["content"] + "<|im_end|>"  # the end-of-turn is trained
    # an assistant turn with weight 0 contributes nothing
    multi = [
        base[0],
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Ignored answer", "weight": 0},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "Kept"},
    ]
    changed = [*multi[:2], {**multi[2], "content": "Something else entirely"}, *multi[3:]]
    s, t = (to_sample(renderer.render(m)) for m in (multi, changed))
    assert s is not None and t is not None
    assert tokenizer.decode(list(s.targets)) == "Kept<|im_end|>"
    assert s.targets == t.targets
    # prompt/completion data: the completion (and the closing eos) only
    (completion,) = renderer.render_completion([("Translate: chat ->", " cat")])
    c = to_sample(completion)
    assert c is not None and tokenizer.decode(list(c.targets)) == " cat<|im_end|>"


def test_masked_tokens_get_no_gradient(tiny_model_dir: Path) -> None:
    """The gradient of the loss with respect to the input embeddings is zero after the last trained token."""
    from tuneloop.train.packed import PackedCausalLM

    model, _, renderer = tiny_parts(tiny_model_dir)
    rendered = renderer.render(conversations(1)[0]["messages"])
    ids = torch.tensor([rendered.input_ids])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0, :-1]
    mask = torch.tensor(rendered.mask[1:])
    F.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum").backward()
    last_label_input = max(i for i, m in enumerate(rendered.mask) if m) - 1
    assert embeds.grad[0, last_label_input + 1 :].abs().sum() == 0
    # ...and the packed forward computes nothing there: its inputs end at the last label position
    sample = to_sample(rendered)
    assert sample is not None and len(sample.input_ids) == last_label_input + 1
    out = PackedCausalLM(model)(pack([sample]))
    assert out.loss.item() / out.labels == pytest.approx(reference_loss(model, [rendered]).item(), abs=1e-5)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_packed_batch_equals_one_example_at_a_time(tiny_model_dir: Path, share_prefix: bool) -> None:
    from tuneloop.train.packed import PackedCausalLM

    model, _, renderer = tiny_parts(tiny_model_dir)
    model = lora(model)
    rendered = renderer.render_many([(c["messages"], None) for c in conversations(6, seed=1)])
    samples = [to_sample(r) for r in rendered]
    batch = pack(samples, share_prefix=share_prefix)
    if share_prefix:
        assert batch.prefix_length > 20  # the system prompt is computed once
    out = PackedCausalLM(model)(batch)
    packed_loss = out.loss / out.labels
    packed_loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ref = reference_loss(model, rendered)
    ref.backward()
    assert packed_loss.item() == pytest.approx(ref.item(), abs=1e-5)
    for name, p in model.named_parameters():  # gradients flow through the shared prefix's keys and values
        if p.requires_grad:
            torch.testing.assert_close(packed_grads[name], p.grad, rtol=1e-4, atol=1e-6)


def run_config(tmp_path: Path, model: str, name: str, **kw) -> TrainConfig:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(data, conversations(24, seed=2, long_answers=True))
    defaults = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 20.0, "lora_r": 4, "lora_dropout": 0.0}
    return TrainConfig(model=model, training_file=data, output_dir=tmp_path / name, **{**defaults, **kw})


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_batch_of_8_equals_4_accumulated_micro_batches_of_2(tmp_path: Path, tiny_model: str) -> None:
    whole = train(run_config(tmp_path, tiny_model, "whole"))
    accumulated = train(run_config(tmp_path, tiny_model, "accumulated", micro_batch_size=2))
    a = [r["train_loss"] for r in _rows(whole.metrics_csv)]
    b = [r["train_loss"] for r in _rows(accumulated.metrics_csv)]
    assert len(a) == whole.total_steps == 6
    assert a == pytest.approx(b, abs=1e-5)
    wa, wb = adapter_tensors(whole.weights_path), adapter_tensors(accumulated.weights_path)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def _rows(path: Path) -> list[dict]:
    from tuneloop.train.metrics import MetricsCSV

    return MetricsCSV(path).read()


def test_lora_trains_adapters_only_and_plain_peft_loads_them(tmp_path: Path, tiny_model: str, tiny_model_dir) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_before = (tiny_model_dir / "model.safetensors").read_bytes()
    valid = write_jsonl(tmp_path / "valid.jsonl", conversations(10, seed=3))
    steps: list = []
    started: list = []  # the resolved hyperparameters come back through on_start, before the first step
    result = train(
        run_config(tmp_path, tiny_model, "lora", validation_file=valid),
        callbacks=TrainCallbacks(on_start=started.append, on_step=steps.append),
        settings=get_settings(),
    )
    assert started == [result.hyperparameters]
    out = result.weights_path
    assert not list(out.parent.glob(".*.tmp")) and not list((out.parent / "checkpoints").glob(".*.tmp"))
    assert out == tmp_path / "lora" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    tensors = adapter_tensors(out)
    assert tensors and all("lora_" in k for k in tensors)  # only adapter weights are saved
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in tensors.items())  # B starts at zero: it changed
    assert (tiny_model_dir / "model.safetensors").read_bytes() == base_before
    assert steps[0].train_loss > steps[-1].train_loss  # it learns (a high LR on a tiny task)
    # plain peft on the plain base model reproduces the trainer's final full-validation loss
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_params = {n: p.clone() for n, p in base.named_parameters()}
    peft_model = PeftModel.from_pretrained(base, str(out))
    _, _, renderer = tiny_parts(tiny_model_dir)
    rendered = renderer.render_many([(c["messages"], None) for c in conversations(10, seed=3)])
    with torch.no_grad():
        loss = reference_loss(peft_model, rendered).item()
    assert result.final_metrics is not None and result.best_epoch is not None
    assert result.best_epoch.loss == pytest.approx(loss, abs=1e-4)  # the kept epoch's full-validation loss
    for n, p in peft_model.get_base_model().named_parameters():  # the adapters did not touch the base weights
        if "lora_" not in n:
            torch.testing.assert_close(p, base_params[n.replace(".base_layer", "")], rtol=0, atol=0)
    # metrics: OpenAI's columns, per-step training metrics, periodic and final validation
    rows = _rows(result.metrics_csv)
    assert len(rows) == result.total_steps
    assert all(r["train_loss"] is not None and r["train_accuracy"] is not None for r in rows)
    assert rows[-1]["full_valid_loss"] is not None and rows[-1]["valid_loss"] is not None
    resolved = json.loads(result.resolved_config.read_text())
    assert resolved["hyperparameters"]["batch_size"] == 8 and resolved["hyperparameters"]["rules"]
    assert result.trained_tokens == resolved["trained_tokens"] > 0


def test_the_final_model_is_the_epoch_with_the_best_validation_answers(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """select_best_epoch: the epoch with the best answer accuracy (ties: lower loss) is the final model."""
    from safetensors.torch import load_file

    from tuneloop.train import loop

    # the tiny random model answers nothing right: script the full validation's answer accuracy per epoch
    scripted, evaluate = iter([0.5, 0.9, 0.7] * 2), loop._evaluate

    def scripted_evaluate(run, indices):
        result = evaluate(run, indices)
        full = len(indices) == len(run.valid)
        return result._replace(answer_accuracy=next(scripted)) if full else result

    monkeypatch.setattr(loop, "_evaluate", scripted_evaluate)
    valid = write_jsonl(tmp_path / "valid.jsonl", conversations(12, seed=3))
    kw = {"validation_file": valid, "method": "full", "n_epochs": 3, "learning_rate_multiplier": 100.0}
    best = train(run_config(tmp_path, tiny_model, "best", **kw), settings=get_settings())
    last = train(run_config(tmp_path, tiny_model, "last", select_best_epoch=False, **kw), settings=get_settings())
    epochs = [r for r in _rows(best.metrics_csv) if r["full_valid_answer_accuracy"] is not None]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]  # full validation after every epoch
    top = max(epochs, key=lambda r: (r["full_valid_answer_accuracy"], -r["full_valid_loss"]))
    assert best.best_epoch is not None and last.best_epoch is None
    assert (best.best_epoch.epoch, best.best_epoch.step) == (top["epoch"], top["step"])
    assert best.best_epoch.epoch == 2 and best.best_epoch.answer_accuracy == 0.9  # an earlier epoch was kept
    # the kept weights are that epoch's checkpoint; without selection, the last epoch's
    weights = lambda folder: load_file(str(folder / "model.safetensors"))  # noqa: E731
    for run, step in ((best, top["step"]), (last, last.total_steps)):
        kept, checkpoint = weights(run.weights_path), weights(run.output_dir / "checkpoints" / f"step-{step}")
        assert kept.keys() == checkpoint.keys()
        for k, v in kept.items():
            torch.testing.assert_close(v, checkpoint[k], rtol=0, atol=0)
    assert not (best.output_dir / "best").exists()


def test_full_fine_tuning_writes_a_safetensors_model(tmp_path: Path, tiny_model: str, tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    result = train(run_config(tmp_path, tiny_model, "full", method="full", n_epochs=1, learning_rate_multiplier=100.0))
    assert result.weights_path == tmp_path / "full" / "model"
    assert (result.weights_path / "model.safetensors").is_file()
    trained = AutoModelForCausalLM.from_pretrained(result.weights_path, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    changed = [
        n for (n, p), q in zip(trained.named_parameters(), base.parameters(), strict=True) if not torch.equal(p, q)
    ]
    assert any("layers.0" in n for n in changed) and any("embed_tokens" in n for n in changed)


def test_a_packed_pass_calls_between_layers_forward_and_backward(tiny_model_dir: Path) -> None:
    """Each decoder layer calls ``between_layers`` as its forward and its backward start (under PEFT too);
    a pass without gradients, forward only."""
    from peft import LoraConfig, get_peft_model

    from tuneloop.train.packed import PackedCausalLM

    model, _, renderer = tiny_parts(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    calls: list[int] = []
    packed = PackedCausalLM(model, between_layers=lambda: calls.append(1))
    layers = model.config.num_hidden_layers
    batch = pack([to_sample(renderer.render(c["messages"])) for c in conversations(2)])
    with torch.no_grad():
        packed(batch)
    assert len(calls) == layers
    out = packed(batch)
    assert len(calls) == 2 * layers
    out.loss.backward()
    assert len(calls) == 3 * layers
