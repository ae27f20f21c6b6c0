"""Shared fixtures: an isolated TUNELOOP_HOME per test, and a tiny random Llama with the real tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Steps keep their thread count whatever else runs: tests compare losses and answers across runs,
# and a reduction split over another number of threads rounds differently (tuneloop.cpu is unit-tested).
os.environ.setdefault("TUNELOOP_ADAPTIVE_THREADS", "false")
# `tuneloop train` run in-process (CliRunner) would lower this process's own priority for the rest of
# the session; the tests of training's priority set it for the processes they start.
os.environ.setdefault("TUNELOOP_TRAIN_NICE", "0")


@pytest.fixture(autouse=True)
def tuneloop_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty TUNELOOP_HOME (never the user's ~/.tuneloop)."""
    home = tmp_path / "tuneloop-home"
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    for var in ("TUNELOOP_DATABASE_URL", "TUNELOOP_API_KEY", "TUNELOOP_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2 tokenizer, extracted once per session from the bundled GGUF."""
    from transformers import AutoTokenizer

    from tuneloop.models.catalog import builtin_gguf_path

    gguf = builtin_gguf_path()
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    """A randomly initialised 2-layer, hidden-64 Llama with the real SmolLM2 tokenizer, saved as a HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def tiny_model(tiny_model_dir: Path) -> str:
    """Register the tiny model in this test's catalog and return its name."""
    from tuneloop.config import get_settings
    from tuneloop.models import Catalog

    Catalog(get_settings()).add("tiny-llama", tiny_model_dir)
    return "tiny-llama"


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real bundled model converted once per session (for tests marked real_model)."""
    from tuneloop.config import Settings
    from tuneloop.models import Catalog

    home = tmp_path_factory.mktemp("real-home")
    catalog = Catalog(Settings(home=home))
    entry = catalog.ensure_ready(catalog.get("smollm2-135m-instruct"))
    assert entry.path is not None
    return entry.path


@pytest.fixture
def smollm2(smollm2_converted: Path, tuneloop_home: Path) -> str:
    """The real model available in this test's home (linked, not converted again)."""
    models = tuneloop_home / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "smollm2-135m-instruct").symlink_to(smollm2_converted, target_is_directory=True)
    return "smollm2-135m-instruct"


def pytest_configure(config: pytest.Config) -> None:
    """Let tests import the helpers module next to this file."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def postgres_server_url():
    """A PostgreSQL server URL for this session (see tests/postgres.py); skips the test if none."""
    from postgres import PostgresUnavailable, postgres_server

    try:
        with postgres_server() as url:
            if url is None:
                pytest.skip("no PostgreSQL here: install postgresql-15 or set TUNELOOP_TEST_POSTGRES_URL")
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def postgres_url(postgres_server_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty PostgreSQL database for this test, also set as TUNELOOP_DATABASE_URL."""
    import re

    from postgres import create_database

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:55]
    url = create_database(postgres_server_url, name)
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", url)
    return url


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A real server (with its worker) on a free port, sharing one home across a test module."""
    from tuneloop.config import Settings
    from tuneloop.models import Catalog

    from helpers import ServerProcess

    home = tmp_path_factory.mktemp("server-home")
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    server = ServerProcess(home).wait_ready()
    yield server
    server.stop()
