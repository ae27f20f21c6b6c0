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


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory, tiny_model_dir, smollm2_tokenizer_dir):
    """A LoRA fine-tune of the tiny model (50 real training steps to one fixed reply) and 20 chat prompts of
    its task. Its greedy choices are decided by training, not by the near-ties of a random model's logits."""
    from transformers import AutoTokenizer

    from tuneloop.config import Settings
    from tuneloop.train import TrainConfig, train

    home = tmp_path_factory.mktemp("export-home")
    settings = Settings(home=home)
    Catalog(settings).add("tiny-llama", tiny_model_dir)
    words = ["red", "blue", "green", "cat", "dog", "lamp", "table", "river", "stone", "cloud"]
    rows = [{"messages": [{"role": "user", "content": f"{words[i % 10]} {words[i * 3 % 10]} {i}"},
                          {"role": "assistant", "content": "The answer is yes, and it is final."}]}
            for i in range(40)]  # fmt: skip
    data = home / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = TrainConfig(model="tiny-llama", training_file=data, output_dir=home / "run", n_epochs=10, batch_size=8,
                         learning_rate_multiplier=100.0, lora_r=8)  # fmt: skip
    adapter = train(config, settings=settings).weights_path
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{words[i % 10]} {words[i * 7 % 10]} "
                                              f"{100 + i}"}], add_generation_prompt=True, return_dict=False)
               for i in range(20)]  # fmt: skip
    return adapter, prompts


@pytest.mark.parametrize(("quantize", "agreement"), [("f16", 1.0), ("q8_0", 0.95)])
def test_a_gguf_export_round_trips(tiny_model, tiny_model_dir, trained_adapter, tmp_path, quantize, agreement):
    """The GGUF of a trained LoRA fine-tune, merged, loaded by transformers (``gguf_file=``) and by ``tuneloop
    models add``, gives the served greedy tokens on 20 prompts: all of them in f16; in q8_0 logits within 5%
    of float32's and the same next token at >= 95% of the served positions (teacher-forced)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, prompts = trained_adapter
    out = tmp_path / "gguf"
    files = export_model(Catalog(get_settings()), tiny_model, "lora", adapter, out, fmt="gguf", quantize=quantize)
    assert [f.name for f in files] == ["Modelfile", "model.gguf"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    expected = served_tokens(tiny_model_dir, adapter, prompts)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    catalog = Catalog(get_settings())
    added = catalog.add("exported", out / "model.gguf")
    merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(merged, str(adapter)).merge_and_unload().eval()
    from_catalog = AutoModelForCausalLM.from_pretrained(catalog.ensure_ready(added).path, dtype=torch.float32).eval()
    for model in (loaded, from_catalog):
        with torch.no_grad():
            exact = merged(torch.tensor([prompts[0]])).logits
            error = (model(torch.tensor([prompts[0]])).logits - exact).norm() / exact.norm()
        assert error < (1e-3 if quantize == "f16" else 0.05), float(error)
        # teacher-forced on the served tokens (all positions agree = the same greedy answer)
        same = sum(forced_agreement(model, ids, tokens) for ids, tokens in zip(prompts, expected, strict=True))
        assert same >= agreement * 8 * len(prompts), (quantize, same)


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
        (
            [tiny_model, "-o", str(tmp_path / "y"), "--format", "gguf", "--quantize", "q2_k"],
            "choose one of f16, q8_0, q4_0, q4_k_m",
        ),
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
def test_a_fine_tune_of_the_bundled_model_exports_and_decodes_as_served(smollm2, smollm2_converted, tmp_path):
    """A LoRA fine-tune of the bundled model (a few real training steps), exported merged and as a q8_0 GGUF:
    the merged folder gives the served greedy tokens (float32 engine, adapter applied per request) at every
    position; the GGUF, loaded back by transformers, the same next token at >= 95% of them (q8_0 of
    the base model agreed at 78 of 80 in one run), with the chat template kept. (q4_k_m, mostly Q5_0 on this
    model, agreed at 70 of 80 in one run: README quotes it; a threshold two tokens below a measurement would
    be a test of luck.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.train import TrainConfig, train

    rows = [{"messages": [{"role": "user", "content": f"Say something about the number {i}."},
                          {"role": "assistant", "content": f"NUMBER {i} IS A FINE NUMBER!"}]}
            for i in range(12)]  # fmt: skip
    data = tmp_path / "caps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = TrainConfig(model=smollm2, training_file=data, output_dir=tmp_path / "run", n_epochs=1, batch_size=4,
                         learning_rate_multiplier=10.0, lora_r=8)  # fmt: skip
    adapter = train(config).weights_path
    catalog = Catalog(get_settings())
    export_model(catalog, smollm2, "lora", adapter, tmp_path / "merged")
    export_model(catalog, smollm2, "lora", adapter, tmp_path / "gguf", fmt="gguf", quantize="q8_0")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_converted)
    questions = ["Say something about the number 40.", "Why is the sky blue?", "Name three fruits.",
                 "What is 2 + 2?", "Write a haiku about rain."]  # fmt: skip
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=False) for q in questions]  # fmt: skip
    expected = served_tokens(smollm2_converted, adapter, prompts, 16)
    base = greedy(AutoModelForCausalLM.from_pretrained(smollm2_converted, dtype=torch.float32).eval(), prompts, 16)
    assert base != expected  # the fine-tune changed the answers
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf", dtype=torch.float32)
    # teacher-forced: the served answers may end (at <|im_end|>), which generate's min_new_tokens would forbid
    agree = [
        sum(forced_agreement(model.eval(), ids, tokens) for ids, tokens in zip(prompts, expected, strict=True))
        for model in (merged, loaded)
    ]
    assert agree[0] == 16 * len(prompts) and agree[1] >= 0.95 * 16 * len(prompts), agree
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
    pair = {"input": {"messages": [same, {"role": "user", "content": "x"}]},
            "preferred_output": [{"role": "assistant", "content": "a"}],
            "non_preferred_output": [{"role": "assistant", "content": "b"}]}  # fmt: skip
    preference.write_text(json.dumps(pair) + "\n")
    assert constant_system_prompt(preference) == "Be brief."
    (tmp_path / "bad.jsonl").write_text('{"messages": [\n')
    assert constant_system_prompt(tmp_path / "bad.jsonl") is None


@pytest.fixture(scope="module")
def llama256_dir(tmp_path_factory, smollm2_tokenizer_dir):
    """A random 2-layer Llama whose rows are all multiples of 256 long (hidden 256, intermediate 512), so
    q4_k_m quantizes every weight in k-quants."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llama256")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_q4_k_m_mixes_k_quants_as_llama_cpp_and_loads_back(llama256_dir, tmp_path):
    """q4_k_m as llama.cpp's Q4_K_M: the tied token embeddings in Q6_K (they are the output), attn_v and
    ffn_down in Q6_K in the ``use_more_bits`` layers (here the last), Q4_K elsewhere, norms in f32. Loaded
    back by transformers (``gguf_file=``, which ``tuneloop models add`` converts a GGUF with), every weight
    is within its type's error of float32's (Q4_K ~7%, Q6_K ~2% relative RMS for these Gaussian weights),
    and the logits closer to float32's than q4_0's (all in 4 bits, the embeddings in q8_0)."""
    import gguf
    from transformers import AutoModelForCausalLM

    catalog = Catalog(get_settings())
    catalog.add("llama256", llama256_dir)
    for quantize in ("q4_k_m", "q4_0"):
        export_model(catalog, "llama256", "base", None, tmp_path / quantize, fmt="gguf", quantize=quantize)
    reader = gguf.GGUFReader(tmp_path / "q4_k_m" / "model.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    six = {"token_embd.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"}
    norms = {name for name in types if name.endswith("norm.weight")}
    assert {name for name, kind in types.items() if kind == "Q6_K"} == six and "output.weight" not in types
    assert all(types[name] == "F32" for name in norms) and len(norms) == 5
    assert all(kind == "Q4_K" for name, kind in types.items() if name not in six | norms), types
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 15  # llama.cpp's MOSTLY_Q4_K_M
    exact = AutoModelForCausalLM.from_pretrained(llama256_dir, dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q4_k_m", gguf_file="model.gguf", dtype=torch.float32)
    weights, original = loaded.state_dict(), exact.state_dict()
    in_q6_k = ("embed_tokens.weight", "1.self_attn.v_proj.weight", "1.mlp.down_proj.weight")
    for name, tensor in original.items():
        if tensor.ndim == 2 and name != "lm_head.weight":
            bound = 0.02 if name.endswith(in_q6_k) else 0.08
            error = (weights[name] - tensor).norm() / tensor.norm()
            assert error < bound, (name, float(error))
    ids = torch.tensor([random_prompts(1)[0] * 2])
    q4_0 = AutoModelForCausalLM.from_pretrained(tmp_path / "q4_0", gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        logits = exact(ids).logits
        error, error_q4_0 = ((m.eval()(ids).logits - logits).norm() / logits.norm() for m in (loaded, q4_0))
    assert error < 0.2 and error < error_q4_0, (float(error), float(error_q4_0))


def test_q4_k_m_falls_back_where_rows_are_not_256_long(tiny_model, tmp_path):
    """The tiny model's rows (64, 128) fit no k-quant: as llama.cpp, Q4_K falls back to Q5_0 and Q6_K (the
    tied embeddings, the last layer's attn_v and ffn_down) to Q8_0."""
    import gguf

    export_model(Catalog(get_settings()), tiny_model, "base", None, tmp_path / "k", fmt="gguf", quantize="q4_k_m")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "k" / "model.gguf").tensors}
    eight = {"token_embd.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"}
    assert {name for name, kind in types.items() if kind == "Q8_0"} == eight
    assert all(kind in ("Q5_0", "F32") for name, kind in types.items() if name not in eight), types


def test_q4_k_m_types_for_the_bundled_models_shapes():
    """llama.cpp's choices for SmolLM2-135M (30 layers, hidden 576, intermediate 1536) and an untied head."""
    from tuneloop.models.export import q4_k_m_type

    def kind(name: str, row: int = 576, tied: bool = True) -> str:
        return q4_k_m_type(name, row, 30, not tied).name

    more_bits = [i for i in range(30) if kind(f"blk.{i}.ffn_down.weight", 1536) == "Q6_K"]
    assert more_bits == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert [kind(f"blk.{i}.ffn_down.weight", 1536) for i in (3, 4)] == ["Q4_K", "Q4_K"]
    assert [kind(f"blk.{i}.attn_v.weight") for i in (0, 3)] == ["Q8_0", "Q5_0"]  # 576: not a multiple of 256
    assert [kind("token_embd.weight"), kind("blk.7.attn_q.weight"), kind("blk.0.ffn_up.weight")] == [
        "Q8_0",
        "Q5_0",
        "Q5_0",
    ]
    assert [kind("token_embd.weight", 512, False), kind("output.weight", 512, False)] == ["Q4_K", "Q6_K"]
    assert kind("blk.0.attn_q.weight", 48) == "F16"  # not a multiple of 32 either
