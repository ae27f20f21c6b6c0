"""Group-quantized weights for decoding: 8- or 4-bit codes with a scale (and offset) per 32 inputs.

Decoding reads every weight once per step, so its speed is set by the bytes of the weights:
int8 codes read 3.2x fewer bytes than float32, 4-bit codes (two per byte) 5.3x fewer.
``GroupQuantized.matmul`` runs the C kernel in ``kernels/qmatmul.c`` (AVX2 + FMA; AVX-512 where
the CPU has it; see ``native``); where the kernels cannot be built ``native.available()`` is
False and the engine keeps float32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneloop.serve import native

GROUP = 32


@dataclass
class GroupQuantized:
    """``W [N, K] = scale[:, k // 32] * codes + offset[:, k // 32]`` (offset None: symmetric).

    ``codes`` are int8 [N, K], one per byte, or, for 4-bit codes (0..15), uint8 [N, K / 2] packed as
    GGUF packs them: byte j of each group of 16 holds code j in its low nibble and code j + 16 in
    its high one. 4-bit codes read half the bytes.
    """

    codes: torch.Tensor  # int8 [N, K], or uint8 [N, K // 2] for 4-bit codes
    scale: torch.Tensor  # float32 [N, K // 32]
    offset: torch.Tensor | None  # float32 [N, K // 32]

    def __post_init__(self) -> None:
        if self.codes.dtype not in (torch.int8, torch.uint8) or self.codes.dim() != 2:
            raise ValueError(f"codes must be int8 or packed 4-bit uint8 [N, *], got {self.codes.dtype}")
        n, k = self.shape
        if k % GROUP or self.scale.shape != (n, k // GROUP):
            raise ValueError(f"codes {tuple(self.codes.shape)} and scale {tuple(self.scale.shape)} do not match")
        if self.offset is not None and self.offset.shape != self.scale.shape:
            raise ValueError("offset and scale shapes differ")
        self._call: tuple | None = None  # the kernel and the codes' addresses, bound on first use

    @property
    def bits(self) -> int:
        return 4 if self.codes.dtype == torch.uint8 else 8

    @property
    def shape(self) -> tuple[int, int]:
        """The weight's [N, K]."""
        n, width = self.codes.shape
        return n, width * 8 // self.bits

    @property
    def nbytes(self) -> int:
        parts = [self.codes, self.scale] + ([self.offset] if self.offset is not None else [])
        return sum(t.numel() * t.element_size() for t in parts)

    def unpacked(self) -> torch.Tensor:
        """The codes, one per element: int8 [N, K]."""
        if self.bits == 8:
            return self.codes
        n, k = self.shape
        groups = self.codes.view(n, k // GROUP, GROUP // 2)
        return torch.cat([groups & 0x0F, groups >> 4], dim=-1).view(n, k).to(torch.int8)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these codes stand for (computed as the kernel does: ``scale * q + offset``)."""
        n, k = self.shape
        w = self.unpacked().view(n, k // GROUP, GROUP).float() * self.scale[:, :, None]
        if self.offset is not None:
            w = w + self.offset[:, :, None]
        return w.view(n, k)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ W.T`` in float32 with the C kernel (called ~200 times a step: kept lean)."""
        if self._call is None:
            self._call = self._bind()
        kernel, q, s, o, n, k = self._call
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != k:
            raise ValueError(f"expected float32 [M, {k}], got {x.dtype} {tuple(x.shape)}")
        if not x.is_contiguous():
            x = x.contiguous()
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        kernel(q, s, o, x.data_ptr(), y.data_ptr(), x.shape[0], n, k)
        return y

    def _bind(self) -> tuple:
        lib = native.library()
        if lib is None:
            raise RuntimeError(f"the quantized kernel is not available: {native.error()}")
        for t in (self.codes, self.scale, self.offset):
            if t is not None and not t.is_contiguous():
                raise ValueError("codes, scales and offsets must be contiguous")
        kernel = lib.tl_qmatmul4 if self.bits == 4 else lib.tl_qmatmul
        offset = self.offset.data_ptr() if self.offset is not None else None
        return (kernel, self.codes.data_ptr(), self.scale.data_ptr(), offset, *self.shape)


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


def max_rows() -> int:
    """Up to how many rows the kernel beats float32 MKL on this machine (measured on 2 cores, the
    bundled model's projections): AVX2 build, about 32 rows; AVX-512 build (Zen 5), 192 rows still
    1.6x faster (14 vs 36 ms at 16 rows): 256."""
    return 256 if native.available() and native.lane_flags(native.cpu_flags()) else 32
