"""Export a model out of tuneloop (``tuneloop models export``): a Hugging Face folder, or GGUF + Modelfile.

A base model is written as it is loaded; a LoRA fine-tune (or checkpoint) has its adapter merged
into its base model's weights (``W + scale * B @ A``, peft's ``merge_and_unload``); a full
fine-tune is written from its own weights. ``merged``: the float32 weights (safetensors), the
tokenizer with the chat template the model was trained with, and ``generation_config.json``.
``gguf``: one GGUF file (f16, q8_0, q4_0 or q4_k_m) for llama.cpp with its metadata, vocabulary and chat
template, and an Ollama ``Modelfile``. The folder appears whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tuneloop.errors import InvalidModelError, TuneloopError
from tuneloop.fileio import atomic_path
from tuneloop.models.catalog import Catalog
from tuneloop.models.loading import load_full_model, load_model

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

ModelKind = Literal["base", "lora", "full"]
FORMATS = ("merged", "gguf")


def load_exported(catalog: Catalog, base: str, kind: ModelKind, path: Path | None):
    """The model to export (``base`` itself, or the LoRA adapter merged into it / the full fine-tune
    at ``path`` trained from ``base``), in float32 on the CPU, and its tokenizer."""
    try:
        if kind == "full":
            model, tokenizer = load_full_model(path, catalog.ensure_ready(catalog.get(base)))
        else:
            model, tokenizer, _ = load_model(catalog, base, device="cpu")
        if kind == "lora":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except InvalidModelError:  # the base model's own, already clear
        raise
    except Exception as exc:  # missing, truncated or damaged files
        raise InvalidModelError(f"the fine-tuned model's files are unreadable ({type(exc).__name__})") from exc
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def export_model(
    catalog: Catalog,
    base: str,
    kind: ModelKind,
    path: Path | None,
    out: Path,
    *,
    fmt: str = "merged",
    quantize: str = "f16",
    name: str = "model",
    force: bool = False,
    system: str | None = None,
) -> list[Path]:
    """Export a model into the folder ``out`` (``merged``: a Hugging Face folder; ``gguf``: ``model.gguf``
    and an Ollama ``Modelfile``, with ``system`` as its system prompt); return the files written. ``out``
    must not exist unless ``force`` (then it is replaced once the new folder is whole); nothing is left
    half-written."""
    if fmt not in FORMATS:
        raise TuneloopError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "gguf" and quantize not in GGUF_TYPES:
        raise TuneloopError(f"--quantize {quantize!r}: choose one of {', '.join(GGUF_TYPES)} for gguf")
    if out.exists() and not force:
        raise TuneloopError(f"{out} already exists (--force replaces it)")
    model, tokenizer = load_exported(catalog, base, kind, path)
    with atomic_path(out, directory=True) as folder:
        if fmt == "merged":
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        else:
            write_gguf(model, tokenizer, folder / "model.gguf", quantize, name)
            (folder / "Modelfile").write_text(modelfile(tokenizer, "model.gguf", system), encoding="utf-8")
    return sorted(out.iterdir())


def modelfile(tokenizer, gguf_name: str, system: str | None = None) -> str:
    """An Ollama Modelfile for the GGUF: its stop token, a Go template where the chat template is ChatML
    (for other templates Ollama reads the GGUF's own ``tokenizer.chat_template``), and ``system`` as the
    default system prompt (left out if it holds the Modelfile's own ``\"\"\"`` quotes)."""
    lines = [f"FROM ./{gguf_name}"]
    if system and '"""' not in system:
        lines.append(f'SYSTEM """{system}"""')
    template = tokenizer.chat_template or ""
    if "<|im_start|>" in template:
        lines.append(
            'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
            '{{ end }}<|im_start|>assistant\n"""'
        )
    if tokenizer.eos_token:
        lines.append(f"PARAMETER stop {json.dumps(tokenizer.eos_token)}")
    return "\n".join(lines) + "\n"


#: GGUF tensor types ``--quantize`` offers (q4_k_m: Q4_K's, mixed as llama.cpp mixes it), and llama.cpp's
#: file-type code of each
GGUF_TYPES = {"f16": ("F16", 1), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2), "q4_k_m": ("Q4_K", 15)}
#: the Hugging Face architectures the GGUF writer knows (llama.cpp's ``llama`` graph)
GGUF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def write_gguf(model, tokenizer, out: Path, quantize: str = "f16", name: str = "model") -> Path:
    """Write a Llama-family ``model`` and its (BPE) ``tokenizer`` as one GGUF file, as llama.cpp's
    ``convert_hf_to_gguf.py`` does: its metadata keys, tensor names (the ``gguf`` package's map),
    Q/K rows in its rotary order, the vocabulary with merges and special tokens, the chat template.
    Norms stay float32; 2-D weights are ``quantize``: f16, q8_0, q4_0 (whose token embeddings keep q8_0;
    a row not a multiple of 32 stays f16), or q4_k_m (llama.cpp's mix, ``q4_k_m_type``)."""
    import gguf
    import numpy as np

    from tuneloop.models import kquants

    config = model.config
    if config.architectures and config.architectures[0] not in GGUF_ARCHITECTURES:
        raise TuneloopError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)}, not {config.architectures[0]}")
    if quantize not in GGUF_TYPES:
        raise TuneloopError(f"--quantize {quantize!r}: choose one of {', '.join(GGUF_TYPES)}")
    qtype, file_type = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[quantize][0]), GGUF_TYPES[quantize][1]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise TuneloopError(f"GGUF export: rope scaling {rope['rope_type']!r} is not supported yet")
    writer.add_rope_freq_base(float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    _add_vocabulary(writer, tokenizer, config.vocab_size)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TuneloopError(f"GGUF export: no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _rotary_order(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _rotary_order(data, kv_heads)
        if data.ndim == 1:
            writer.add_tensor(gguf_name, data.astype(np.float32))
            continue
        if quantize == "q4_k_m":
            kind = q4_k_m_type(gguf_name, data.shape[-1], config.num_hidden_layers, not config.tie_word_embeddings)
        elif qtype != gguf.GGMLQuantizationType.F16 and data.shape[-1] % 32 == 0:
            # as llama.cpp's q4_0 files: the token embeddings (the tied output too) keep 8 bits
            kind = gguf.GGMLQuantizationType.Q8_0 if gguf_name == "token_embd.weight" else qtype
        else:
            kind = gguf.GGMLQuantizationType.F16
        if kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, kquants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def q4_k_m_type(name: str, row: int, layers: int, has_output: bool) -> GGMLQuantizationType:
    """The GGUF type of the 2-D tensor ``name`` (rows ``row`` long) in a q4_k_m file, as llama.cpp's
    ``llama_tensor_get_type`` picks it for a Llama model: Q6_K for ``output.weight`` (for the token embeddings
    when the output is tied to them: Q8_0 if their rows are not a multiple of 256), Q6_K for ``attn_v`` and
    ``ffn_down`` in its ``use_more_bits`` layers (the first and last eighth, every third between), Q4_K
    elsewhere; then its fallback for rows not a multiple of 256 (Q4_K to Q5_0, Q6_K to Q8_0; F16 if not of 32)."""
    from gguf import GGMLQuantizationType as Type

    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    more_bits = layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        kind = Type.Q6_K if row % 256 == 0 else Type.Q8_0
    elif layer >= 0 and more_bits and (".attn_v." in name or ".ffn_down." in name):
        kind = Type.Q6_K
    else:
        kind = Type.Q4_K
    if row % 256:
        kind = Type.Q5_0 if kind == Type.Q4_K else Type.Q8_0 if kind == Type.Q6_K else kind
    return kind if row % 32 == 0 else Type.F16


def _rotary_order(weights, heads: int):
    """Q/K projection rows from Hugging Face's rotary layout (halves) to llama.cpp's (pairs)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_vocabulary(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer's tokens (by id, padded to ``vocab_size``), types, merges, special
    token ids and chat template, under llama.cpp's ``tokenizer.ggml.*`` keys."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise TuneloopError(f"GGUF export needs a BPE tokenizer, not {model.get('type')}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            types.append(gguf.TokenType.CONTROL)
        elif token in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):  # fmt: skip
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
