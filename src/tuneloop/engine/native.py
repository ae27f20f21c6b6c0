"""The serving engine's C kernels (``kernels/*.c``): compiled once per machine, called through ctypes.

* ``tl_qmatmul``, ``tl_qmatmul4`` (``qmatmul.c``): products with group-quantized weights, int8 or
  4-bit codes (``quantized``).
* ``tl_qmatmul_i8`` (``qmatmul_i8.c``): the same products with the activations rounded to int8
  (``quantized.Int8ActivationCodes``): ``vpdpbusd`` on AVX-512 VNNI, ``vpmaddubsw`` on AVX2, with
  bit-identical results.
* ``tl_decode_attention``, ``tl_decode_attention_f16`` (``attention.c``): one layer's RoPE, KV-cache
  write and attention for a step of many sequences and short prompts (``attention``), over float32
  or float16 caches.
* ``tl_lora``, ``tl_lora_f16`` (``lora.c``): the LoRA updates of one projection for a batch of rows that use
  different adapters (``lora_weights.LoraRows``).
* ``tl_add_rmsnorm``, ``tl_silu_mul`` (``pointwise.c``): a layer's residual add + RMSNorm and its
  SiLU gating (``runner``).

Every exported function is declared in ``kernels/tuneloop.h``, which each source includes (the
compiler checks the definitions against it); ``SIGNATURES`` declares the same for ctypes, and
``tests/unit/test_kernel_header.py`` fails where the two disagree.

The sources are built with the system C compiler (AVX2 + FMA, AVX-512 lanes where the CPU has
them, OpenMP) into ``~/.cache/tuneloop/kernels`` (a temporary folder where that is read-only).
``TUNELOOP_KERNELS=avx2`` builds the AVX2 kernels whatever the CPU has (to measure, on an AVX-512
machine, what an AVX2-only one runs).
Where they cannot be built (no compiler, not x86-64 with AVX2/FMA/F16C) ``available()`` is False and
the engine runs everything in torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from tuneloop.fileio import atomic_path

log = logging.getLogger(__name__)

_KERNELS = Path(__file__).with_name("kernels")
_SOURCES = [_KERNELS / name for name in ("qmatmul.c", "qmatmul_i8.c", "attention.c", "lora.c", "pointwise.c")]
_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_ERROR: str | None = None

HEADER = _KERNELS / "tuneloop.h"

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
#: every function of ``kernels/tuneloop.h``: (return type, argument types); pointers are
#: ``tensor.data_ptr()`` values
SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "tl_qmatmul": (None, [_P] * 5 + [_I] * 3),
    "tl_qmatmul4": (None, [_P] * 5 + [_I] * 3),
    "tl_qmatmul_i8": (ctypes.c_int, [_P] * 5 + [_I] * 5),
    "tl_decode_attention": (None, [_P] * 10 + [_I] * 5 + [_F]),
    "tl_decode_attention_f16": (None, [_P] * 10 + [_I] * 5 + [_F]),
    "tl_lora": (None, [_P, _P, _I, _I, _I, _I, _P, _P, _I, _I, _P]),
    "tl_lora_f16": (None, [_P, _P, _I, _I, _I, _I, _P, _P, _I, _I, _P]),
    "tl_add_rmsnorm": (None, [_P, _P, _P, _F, _P, _I, _I]),
    "tl_silu_mul": (None, [_P, _P, _P, _I, _I]),
}
#: the CPU flags ``TUNELOOP_KERNELS=avx2`` builds without
AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512_vnni"})


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or None where they cannot be built."""
    global _LIBRARY, _ERROR
    with _LOCK:
        if _LIBRARY is None and _ERROR is None:
            try:
                _LIBRARY = load(build(kernel_flags()))
            except Exception as exc:  # no compiler, unsupported CPU, ...: torch does the work
                _ERROR = str(exc)
                log.warning("C kernels unavailable, serving with torch and float32 weights only: %s", exc)
        return _LIBRARY


def available() -> bool:
    """Whether the kernels run on this machine (compiles them on first call)."""
    return library() is not None


def error() -> str | None:
    """Why the kernels are unavailable (None when they are, or were not tried yet)."""
    return _ERROR


def cpu_flags() -> set[str]:
    """This CPU's feature flags (from ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_flags() -> set[str]:
    """The CPU flags the kernels are built for: this CPU's, less AVX-512 with ``TUNELOOP_KERNELS=avx2``."""
    choice = os.environ.get("TUNELOOP_KERNELS", "native").strip().lower()
    if choice not in ("native", "avx2"):
        raise RuntimeError(f"TUNELOOP_KERNELS={choice!r}: choose native or avx2")
    flags = cpu_flags()
    return flags - AVX512_FLAGS if choice == "avx2" else flags


def lane_flags(flags: set[str]) -> list[str]:
    """Compiler flags for the widest vectors a CPU has beyond AVX2 (16-float AVX-512 lanes), and for
    its int8 dot products (AVX-512 VNNI) where it has them (else ``qmatmul_i8.c`` takes AVX2's)."""
    if "avx512f" not in flags:
        return []
    vnni = ["-mavx512bw", "-mavx512vnni"] if {"avx512bw", "avx512_vnni"} <= flags else []
    return ["-mavx512f", *vnni]


def build(flags: set[str] | None = None) -> Path:
    """Compile the kernels for a CPU with ``flags`` (default: this one's); return the library's path."""
    flags = cpu_flags() if flags is None else flags
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma", "f16c"} <= flags:
        raise RuntimeError("needs an x86-64 CPU with AVX2, FMA and F16C")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    options = [*_FLAGS, *lane_flags(flags)]
    files = sorted(_KERNELS.glob("*.[ch]"))  # the sources and the headers they include (tuneloop.h too)
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files) + " ".join([compiler, *options]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneloop" / "kernels"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build where we can
        cache = Path(tempfile.gettempdir()) / "tuneloop-kernels"
        cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"kernels-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    with atomic_path(target) as built:  # concurrent builders each leave a complete file
        command = [compiler, *options, *map(str, _SOURCES), "-lm", "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-500:]}")
    return target


def load(path: Path) -> ctypes.CDLL:
    """Open a built library and declare its kernels' argument types."""
    import torch  # noqa: F401  (loaded first, so the kernels' OpenMP shares torch's libgomp and threads)

    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib
