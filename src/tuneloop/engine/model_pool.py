"""Models loaded for inference: one engine per base model, LoRA adapters in an LRU cache.

A request's ``model`` is a base model (catalog name), a fine-tuned model (``ft:…``) or a
checkpoint (``ft:…:ckpt-step-N``). LoRA models run on their base model's engine, batched with
everything else on it; fully fine-tuned models get an engine of their own.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tuneloop.engine.engine import Engine
from tuneloop.engine.lora_weights import WEIGHTS_FILE, LoraAdapter, load_lora, lora_shapes
from tuneloop.engine.packed_weights import ServeActivations, ServeWeights, pack_model
from tuneloop.errors import InvalidModelError, ModelNotFoundError
from tuneloop.models import Catalog, load_model
from tuneloop.models.loading import load_full_model
from tuneloop.store.jobs import JobStore

T = TypeVar("T")


@dataclass
class ResolvedModel:
    """What a request's ``model`` refers to."""

    id: str
    base: str
    kind: str  # base | lora | full
    path: Path | None


@dataclass
class EngineOptions:
    """Serving limits."""

    max_batch: int = 16
    max_queue: int = 64
    max_adapters: int = 8
    max_len: int = 4096
    weights: ServeWeights = "auto"  # see Settings.serve_weights
    activations: ServeActivations = "auto"  # see Settings.serve_activations
    adaptive_threads: bool = True  # see Settings.adaptive_threads


class ModelPool:
    """Resolves model ids and hands out (engine, adapter) pairs, loading on first use."""

    def __init__(self, catalog: Catalog, jobs: JobStore | None, options: EngineOptions | None = None):
        self.catalog, self.jobs = catalog, jobs
        self.options = options or EngineOptions()
        self.lock = threading.Lock()
        self._engines: dict[str, Engine] = {}  # base name or full model id -> engine
        #: loaded adapters by model id, each with its weights file's (mtime, size) when loaded
        self._adapters: collections.OrderedDict[str, tuple[LoraAdapter, tuple[int, int] | None]] = (
            collections.OrderedDict()
        )

    def resolve(self, model_id: str) -> ResolvedModel:
        """Map a request's model id to a base, a LoRA adapter or a full model; raise if unknown."""
        if self.jobs is not None and (weights := self.jobs.trained_weights(model_id)) is not None:
            return ResolvedModel(model_id, weights.base, weights.kind, weights.path)
        entry = self.catalog.get(model_id)  # raises ModelNotFoundError
        return ResolvedModel(entry.name, entry.name, "base", None)

    def exists(self, model_id: str) -> bool:
        try:
            self.resolve(model_id)
        except ModelNotFoundError:
            return False
        return True

    def context_length(self, resolved: ResolvedModel) -> int:
        return min(self.catalog.get(resolved.base).context_length, self.options.max_len)

    def acquire(self, resolved: ResolvedModel) -> tuple[Engine, LoraAdapter | None]:
        """The engine to run ``resolved`` on and the adapter to apply (loading either if needed)."""
        with self.lock:
            key = resolved.id if resolved.kind == "full" else resolved.base
            if key not in self._engines:
                self._engines[key] = self._start_engine(resolved)
            engine = self._engines[key]
            if resolved.kind != "lora":
                return engine, None
            stamp = _stamp(resolved.path / WEIGHTS_FILE)
            adapter, loaded = self._adapters.get(resolved.id, (None, None))
            if adapter is None or loaded != stamp:  # new, or its file changed (restored, retrained)
                self._adapters.pop(resolved.id, None)  # a failed load leaves nothing cached
                shapes, layers = lora_shapes(engine.runner.hf.config)
                adapter = load_lora(resolved.id, resolved.path, engine.runner.device, engine.runner.float16_state,
                                    shapes, layers)  # fmt: skip
                self._adapters[resolved.id] = (adapter, stamp)
                while len(self._adapters) > self.options.max_adapters:
                    self._adapters.popitem(last=False)  # in-flight requests keep their reference
            self._adapters.move_to_end(resolved.id)
            return engine, adapter

    def _start_engine(self, resolved: ResolvedModel) -> Engine:
        return _in_passing_thread(lambda: self._load_engine(resolved))

    def _load_engine(self, resolved: ResolvedModel) -> Engine:
        if resolved.kind == "full":
            entry = self.catalog.get(resolved.base)
            try:
                model, tokenizer = load_full_model(resolved.path, entry, self.catalog.settings.resolved_device())
            except Exception as exc:  # missing, truncated or damaged files
                raise InvalidModelError(f"the fine-tuned model's files are unreadable ({type(exc).__name__})") from exc
        else:
            model, tokenizer, entry = load_model(self.catalog, resolved.base)
        o = self.options
        # the GGUF's blocks are the base model's weights, no longer those of a full fine-tune
        gguf = entry.source if entry.source_kind == "gguf" and resolved.kind != "full" else None
        cache = self.catalog.settings.home / "cache" / "int8-codes"
        packed = pack_model(model, o.weights, gguf, cache_dir=cache, activations=o.activations)
        return Engine(
            model, tokenizer, max_batch=o.max_batch, max_len=min(o.max_len, entry.context_length),
            max_queue=o.max_queue, packed=packed, adaptive_threads=o.adaptive_threads,
        )  # fmt: skip

    def engines(self) -> dict[str, Engine]:
        """The running engines by base model (or full model id)."""
        return dict(self._engines)

    def forget(self, model_id: str) -> None:
        """Drop a deleted model from memory."""
        with self.lock:
            self._adapters.pop(model_id, None)
            engine = self._engines.pop(model_id, None)
        if engine is not None:  # a full fine-tuned model's own engine: stop its thread once idle
            threading.Thread(target=engine.close, name=f"close-{model_id}", daemon=True).start()


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's (modification time, size): a cached adapter whose file has another is loaded again."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _in_passing_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a new thread that ends with it, and return its result (or raise its error).

    Loading a model runs parallel torch ops; a long-lived thread that did so (a server's request
    thread) would keep an OpenMP team alive beside the engine thread's and slow every decode step
    (see ``Engine._run``). A thread that ends takes its team with it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-load") as pool:  # its thread ends on exit
        return pool.submit(work).result()
