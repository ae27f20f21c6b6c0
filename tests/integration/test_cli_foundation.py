"""The foundation CLI end to end: models list/add/show and chat, in real subprocesses."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


def test_models_list_shows_builtin():
    result = run_cli("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    names = [m["name"] for m in json.loads(result.stdout)]
    assert names == ["smollm2-135m-instruct"]


def test_models_add_and_show(tiny_model_dir):
    added = run_cli("models", "add", "tiny", str(tiny_model_dir))
    assert added.returncode == 0, added.stderr
    assert "LlamaForCausalLM" in added.stdout
    shown = run_cli("models", "show", "tiny")
    assert shown.returncode == 0 and "context:       1024 tokens" in shown.stdout
    assert "<|im_start|>" in shown.stdout


def test_models_add_bad_folder_is_one_line_error(tmp_path):
    result = run_cli("models", "add", "x", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path) in lines[0]


def test_chat_unknown_model_lists_available():
    result = run_cli("chat", "no-such-model", "-m", "hi")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no-such-model" in result.stderr and "smollm2-135m-instruct" in result.stderr


def test_chat_one_message_prints_only_the_answer(tiny_model):
    result = run_cli("chat", tiny_model, "-m", "hello", "--max-tokens", "5")
    assert result.returncode == 0, result.stderr
    # random weights: some text, and nothing but the answer on stdout
    assert result.stdout.endswith("\n") and "Loaded" not in result.stdout
    assert "Loaded tiny-llama" in result.stderr


def test_chat_interactive_keeps_history(tiny_model):
    result = run_cli("chat", tiny_model, "--max-tokens", "3", input="hi\nagain\n\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) >= 1


@pytest.mark.real_model
def test_real_model_knows_paris(smollm2, monkeypatch):
    # exact decoding: the first token is a near-tie ("The" 25.33 vs "L" 25.24) that int8 activations flip
    monkeypatch.setenv("TUNELOOP_SERVE_ACTIVATIONS", "float32")
    result = run_cli("chat", smollm2, "-m", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
