"""``tuneloop models export --format merged``: a LoRA fine-tune merged into its base decodes as served."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.config import get_settings
from tuneloop.engine.lora_weights import load_lora
from tuneloop.engine.runner import ModelRunner
from tuneloop.models import Catalog
from tuneloop.models.export import export_merged

from helpers import greedy_runner
from tests_lora import make_adapters


def test_a_merged_lora_gives_the_served_greedy_tokens(tiny_model, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapters(tiny_model_dir, tmp_path, 1)[0]
    out = export_merged(Catalog(get_settings()), tiny_model, "lora", adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    served = ModelRunner(base, 1, 512)  # float32 weights, the adapter applied per request as served
    lora = load_lora("ft", adapter)
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(300, 2000, (int(n),), generator=g).tolist() for n in torch.randint(4, 30, (20,), generator=g)
    ]
    same = 0
    for ids in prompts:
        served.start(0)  # a new sequence in the slot
        expected = greedy_runner(served, 0, ids, 8, lora)
        got = merged.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8, min_new_tokens=8)[0, len(ids) :]
        same += got.tolist() == expected
    assert same == len(prompts)
    served.start(0)
    assert greedy_runner(ModelRunner(base, 1, 512), 0, prompts[0], 8) != greedy_runner(served, 0, prompts[0], 8, lora)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and json.loads((out / "generation_config.json").read_text())["eos_token_id"] == (
        tokenizer.eos_token_id
    )
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_a_base_model_exports_unchanged_and_bad_input_is_one_line(tiny_model, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneloop.cli.main import app

    out = tmp_path / "base"
    result = CliRunner().invoke(app, ["models", "export", tiny_model, "-o", str(out)])
    assert result.exit_code == 0, result.output
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    for args, says in [
        (["no-such-model", "-o", str(tmp_path / "x")], "no-such-model"),
        ([tiny_model, "-o", str(out)], "already exists"),
        ([tiny_model, "-o", str(tmp_path / "y"), "--format", "gguf"], "choose one of merged"),
    ]:
        result = CliRunner().invoke(app, ["models", "export", *args])
        assert result.exit_code != 0 and says in f"{result.output} {result.exception}", result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("broken", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_damaged_adapter_is_a_clear_error_and_writes_nothing(tiny_model, tiny_model_dir, tmp_path, broken):
    from tuneloop.errors import InvalidModelError

    adapter = make_adapters(tiny_model_dir, tmp_path, 1)[0]
    (adapter / broken).write_bytes(b"not what it should be")
    with pytest.raises(InvalidModelError, match="unreadable"):
        export_merged(Catalog(get_settings()), tiny_model, "lora", adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
