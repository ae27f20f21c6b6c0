"""``tuneloop models export``: a LoRA fine-tune merged into its base, as a Hugging Face folder or a GGUF,
decodes as served."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tuneloop.config import get_settings
from tuneloop.engine.lora_weights import load_lora
from tuneloop.engine.runner import ModelRunner
from tuneloop.models import Catalog
from tuneloop.models.export import export_model

from helpers import greedy_runner
from tests_lora import make_adapters


def served_tokens(model_dir, adapter, prompts: list[list[int]], n: int = 8) -> list[list[int]]:
    """Greedy tokens as the server gives them: float32 weights, the adapter applied per request."""
    from transformers import AutoModelForCausalLM

    served = ModelRunner(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), 1, 512)
    lora = load_lora("ft", adapter)
    out = []
    for ids in prompts:
        served.start(0)  # a new sequence in the slot
        out.append(greedy_runner(served, 0, ids, n, lora))
    return out


def random_prompts(count: int = 20) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(300, 2000, (int(n),), generator=g).tolist() for n in torch.randint(4, 30, (count,), generator=g)
    ]


def greedy(model, prompts: list[list[int]], n: int = 8) -> list[list[int]]:
    outputs = [
        model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n) for ids in prompts
    ]
    return [out[0, len(ids) :].tolist() for out, ids in zip(outputs, prompts, strict=True)]


def forced_agreement(model, ids: list[int], tokens: list[int]) -> int:
    """At how many of ``tokens``' positions ``model``, fed the tokens before, picks the same one."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + tokens[:-1]])).logits[0, len(ids) - 1 :]
    return int((logits.argmax(dim=-1) == torch.tensor(tokens)).sum())


@pytest.mark.parametrize(("quantize", "agreement"), [("f16", 1.0), ("q8_0", 0.85)])
def test_a_gguf_export_round_trips(tiny_model, tiny_model_dir, tmp_path, quantize, agreement):
    """The GGUF of a merged LoRA, loaded by transformers (``gguf_file=``) and by ``tuneloop models add``,
    gives the served greedy tokens: all of them in f16; in q8_0 logits within 5% of float32's and the
    same next token at >= 85% of the served positions (this random model's top two logits are often
    near-ties, which 8-bit weights flip)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapters(tiny_model_dir, tmp_path, 1)[0]
    out = tmp_path / "gguf"
    files = export_model(Catalog(get_settings()), tiny_model, "lora", adapter, out, fmt="gguf", quantize=quantize)
    assert [f.name for f in files] == ["Modelfile", "model.gguf"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    prompts = random_prompts()
    expected = served_tokens(tiny_model_dir, adapter, prompts)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    catalog = Catalog(get_settings())
    added = catalog.add("exported", out / "model.gguf")
    merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(merged, str(adapter)).merge_and_unload().eval()
    from_catalog = AutoModelForCausalLM.from_pretrained(catalog.ensure_ready(added).path, dtype=torch.float32).eval()
    for model in (loaded, from_catalog):
        if agreement == 1.0:
            assert greedy(model, prompts) == expected
        else:  # teacher-forced on the served tokens
            with torch.no_grad():
                exact = merged(torch.tensor([prompts[0]])).logits
                error = (model(torch.tensor([prompts[0]])).logits - exact).norm() / exact.norm()
            assert error < 0.05, float(error)
            same = sum(forced_agreement(model, ids, tokens) for ids, tokens in zip(prompts, expected, strict=True))
            assert same / (8 * len(prompts)) >= agreement, (quantize, same)


def test_a_merged_lora_gives_the_served_greedy_tokens(tiny_model, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapters(tiny_model_dir, tmp_path, 1)[0]
    export_model(Catalog(get_settings()), tiny_model, "lora", adapter, tmp_path / "merged")
    out = tmp_path / "merged"
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompts = random_prompts()
    assert greedy(merged, prompts) == served_tokens(tiny_model_dir, adapter, prompts)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert greedy(base, prompts) != greedy(merged, prompts)  # the adapter matters
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
        ([tiny_model, "-o", str(tmp_path / "y"), "--format", "onnx"], "choose one of merged, gguf"),
        ([tiny_model, "-o", str(tmp_path / "y"), "--format", "gguf", "--quantize", "q4_k_m"], "choose one of f16"),
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
        export_model(Catalog(get_settings()), tiny_model, "lora", adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.real_model
def test_the_bundled_model_exports_to_gguf_q8_0(smollm2, smollm2_converted, tmp_path):
    """The bundled model as q8_0 GGUF, loaded back by transformers: the same next token as float32 at
    >= 95% of its greedy continuations' positions (teacher-forced), and the chat template kept."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_model(Catalog(get_settings()), smollm2, "base", None, tmp_path / "gguf", fmt="gguf", quantize="q8_0")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_converted)
    questions = ["Why is the sky blue?", "Name three fruits.", "What is 2 + 2?", "Write a haiku about rain.",
                 "How do plants grow?"]  # fmt: skip
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=False) for q in questions]  # fmt: skip
    exact = AutoModelForCausalLM.from_pretrained(smollm2_converted, dtype=torch.float32).eval()
    expected = greedy(exact, prompts, 16)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf", dtype=torch.float32)
    same = sum(forced_agreement(loaded.eval(), ids, tokens) for ids, tokens in zip(prompts, expected, strict=True))
    assert same / (16 * len(prompts)) >= 0.95, same
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf").chat_template
        == tokenizer.chat_template
    )


def test_q4_0_keeps_the_embeddings_in_8_bits(tiny_model, tmp_path):
    """As llama.cpp's q4_0 files: layers in 4 bits, the (tied) token embeddings in q8_0, norms in f32."""
    import gguf

    export_model(Catalog(get_settings()), tiny_model, "base", None, tmp_path / "q4", fmt="gguf", quantize="q4_0")
    reader = gguf.GGUFReader(tmp_path / "q4" / "model.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.1.ffn_down.weight"] == "Q4_0"
    assert types["output_norm.weight"] == "F32" and "output.weight" not in types  # tied to the embeddings
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 2  # llama.cpp's MOSTLY_Q4_0


def test_the_modelfile_carries_the_jobs_one_system_prompt(tiny_model, tiny_model_dir, tmp_path):
    """Exporting a fine-tuned model whose training file had one constant system prompt: the Modelfile's SYSTEM."""
    from tuneloop.cli.main import app
    from tuneloop.store.db import make_engine
    from tuneloop.store.files import FileStore
    from tuneloop.store.jobs import JobStore

    settings = get_settings()
    engine = make_engine(settings)
    system = "Answer with one label: on, off or dim."
    lines = [json.dumps({"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"},
                                      {"role": "assistant", "content": "on"}]}) for i in range(12)]  # fmt: skip
    record = FileStore(engine, settings.home).create_bytes("train.jsonl", "fine-tune", "\n".join(lines).encode())
    jobs = JobStore(engine)
    job = jobs.create(model=tiny_model, training_file=record.id, validation_file=None, hyperparameters={},
                      method="lora", suffix=None, seed=0, metadata=None)  # fmt: skip
    model_id = f"ft:{tiny_model}:local::{job.id[-8:]}"
    jobs.add_model(model_id, tiny_model, job.id, "lora", str(make_adapters(tiny_model_dir, tmp_path, 1)[0]))
    result = CliRunner().invoke(app, ["models", "export", model_id, "-o", str(tmp_path / "g"), "--format", "gguf"])
    assert result.exit_code == 0, result.output
    assert f'SYSTEM """{system}"""' in (tmp_path / "g" / "Modelfile").read_text()


def test_constant_system_prompt(tmp_path):
    from tuneloop.data.prompts import constant_system_prompt

    def file(*firsts) -> object:
        path = tmp_path / "data.jsonl"
        rows = [{"messages": [*([first] if first else []), {"role": "user", "content": "x"}]} for first in firsts]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
        return path

    same = {"role": "system", "content": "Be brief."}
    assert constant_system_prompt(file(same, same, same)) == "Be brief."
    assert constant_system_prompt(file(same, {"role": "system", "content": "Be long."})) is None
    assert constant_system_prompt(file(same, None)) is None  # one example without it
    assert constant_system_prompt(file({"role": "user", "content": "hi"})) is None
    preference = tmp_path / "pref.jsonl"
    preference.write_text(json.dumps({"input": {"messages": [same]}, "preferred_output": [],
                                      "non_preferred_output": []}) + "\n")  # fmt: skip
    assert constant_system_prompt(preference) == "Be brief."
    (tmp_path / "bad.jsonl").write_text('{"messages": [\n')
    assert constant_system_prompt(tmp_path / "bad.jsonl") is None
