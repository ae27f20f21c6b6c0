"""Group-quantized weights for decoding: int8 codes with a scale (and offset) per 32 inputs.

Decoding reads every weight once per step, so its speed is set by the bytes of the weights:
int8 codes read 3.2x fewer bytes than float32. ``GroupQuantized.matmul`` runs the C kernel in
``kernels/qmatmul.c`` (AVX2 + FMA; AVX-512 where the CPU has it), compiled once per machine with
the system C compiler and cached; where it cannot be built (no compiler, not x86-64 with
AVX2/FMA) ``kernel_available()`` is False and the engine keeps using float32 weights.
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
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GROUP = 32
_SOURCE = Path(__file__).with_name("kernels") / "qmatmul.c"
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_LOCK = threading.Lock()
_KERNEL: ctypes._CFuncPtr | None = None
_KERNEL_ERROR: str | None = None


@dataclass
class GroupQuantized:
    """``W [N, K] = scale[:, k // 32] * codes + offset[:, k // 32]`` (offset None: symmetric)."""

    codes: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N, K // 32]
    offset: torch.Tensor | None  # float32 [N, K // 32]

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        if k % GROUP or self.scale.shape != (n, k // GROUP):
            raise ValueError(f"codes {tuple(self.codes.shape)} and scale {tuple(self.scale.shape)} do not match")
        if self.offset is not None and self.offset.shape != self.scale.shape:
            raise ValueError("offset and scale shapes differ")

    @property
    def nbytes(self) -> int:
        parts = [self.codes, self.scale] + ([self.offset] if self.offset is not None else [])
        return sum(t.numel() * t.element_size() for t in parts)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these codes stand for (computed as the kernel does: ``scale * q + offset``)."""
        n, k = self.codes.shape
        w = self.codes.view(n, k // GROUP, GROUP).float() * self.scale[:, :, None]
        if self.offset is not None:
            w = w + self.offset[:, :, None]
        return w.view(n, k)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ W.T`` in float32 with the C kernel."""
        kernel = _KERNEL or load_kernel()
        if kernel is None:
            raise RuntimeError(f"the quantized kernel is not available: {_KERNEL_ERROR}")
        n, k = self.codes.shape
        x = x.contiguous()
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != k:
            raise ValueError(f"expected float32 [M, {k}], got {x.dtype} {tuple(x.shape)}")
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        offset = self.offset.data_ptr() if self.offset is not None else None
        kernel(self.codes.data_ptr(), self.scale.data_ptr(), offset, x.data_ptr(), y.data_ptr(), x.shape[0], n, k)
        return y


def quantize_int8(weight: torch.Tensor) -> GroupQuantized:
    """Symmetric int8 per group of 32 (GGUF's Q8_0 rule): ``scale = max|w| / 127``. Lossy."""
    n, k = weight.shape
    if k % GROUP:
        raise ValueError(f"input size {k} is not a multiple of {GROUP}")
    groups = weight.detach().float().cpu().reshape(n, k // GROUP, GROUP)
    scale = groups.abs().amax(dim=-1) / 127.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    codes = torch.round(groups * inverse[:, :, None]).clamp(-127, 127).to(torch.int8)
    return GroupQuantized(codes.reshape(n, k).contiguous(), scale.contiguous(), None)


# -- the kernel ------------------------------------------------------------------------------------
def kernel_available() -> bool:
    """Whether ``GroupQuantized.matmul`` can run on this machine (compiles the kernel on first call)."""
    return load_kernel() is not None


def max_rows() -> int:
    """Up to how many rows the kernel beats float32 MKL on this machine (measured on 2 cores, the
    bundled model's projections): AVX2 build, about 32 rows; AVX-512 build (Zen 5), 192 rows still
    1.6x faster (14 vs 36 ms at 16 rows): 256."""
    return 256 if load_kernel() is not None and _lane_flags(_cpu_flags()) else 32


def kernel_error() -> str | None:
    """Why the kernel is unavailable (None when it is available or was not tried)."""
    return _KERNEL_ERROR


def load_kernel():
    """The compiled ``tl_qmatmul`` function, or None where it cannot be built."""
    global _KERNEL, _KERNEL_ERROR
    with _LOCK:
        if _KERNEL is None and _KERNEL_ERROR is None:
            try:
                _KERNEL = _load(_build())
            except Exception as exc:  # no compiler, unsupported CPU, ...: fall back to float32
                _KERNEL_ERROR = str(exc)
                log.warning("quantized decode kernel unavailable, serving float32 weights: %s", exc)
        return _KERNEL


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _lane_flags(cpu_flags: set[str]) -> list[str]:
    """Compiler flags for the widest vectors the CPU has beyond AVX2 (16-float AVX-512 lanes)."""
    return ["-mavx512f"] if "avx512f" in cpu_flags else []


def _build(cpu_flags: set[str] | None = None) -> Path:
    """Compile the kernel for a CPU with ``cpu_flags`` (default: this one's); return the library's path."""
    cpu_flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= cpu_flags:
        raise RuntimeError("needs an x86-64 CPU with AVX2 and FMA")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    flags = [*_FLAGS, *_lane_flags(cpu_flags)]
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneloop" / "kernels"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build where we can
        cache = Path(tempfile.gettempdir()) / "tuneloop-kernels"
        cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"qmatmul-{digest}.so"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: concurrent builders each leave a complete file
    return target


def _load(path: Path):
    # torch is imported first, so the kernel's OpenMP calls share torch's libgomp and its threads
    function = ctypes.CDLL(str(path)).tl_qmatmul
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3
    function.restype = None
    return function
