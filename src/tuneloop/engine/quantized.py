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
import torch.nn.functional as F

from tuneloop.engine import native

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
        x, y = _operands(x, n, k)
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


def _operands(x: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel's input ``x [M, K]`` (checked, contiguous) and its output ``y [M, N]`` (uninitialised)."""
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"expected float32 [M, {k}], got {x.dtype} {tuple(x.shape)}")
    return x.contiguous(), torch.empty(x.shape[0], n, dtype=torch.float32)


LANES = 16  # output rows per block of the int8-activation layout


@dataclass
class Int8ActivationCodes:
    """A ``GroupQuantized`` weight laid out for products with int8 activations (``qmatmul_i8.c``).

    The activations are rounded to int8 per block of 32 inputs (``scale = max|x| / 127``) and
    multiplied by the codes in integer arithmetic: lossy (about 0.4% of a block's largest input
    per element), and several times fewer instructions than float32 activations for many rows.
    Build with ``from_codes``; ``matmul`` needs the C kernels (``tl_qmatmul_i8``, AVX2 or AVX-512 VNNI).
    """

    codes: torch.Tensor  # uint8, blocks of 16 output rows x groups x 64-byte chunks (see qmatmul_i8.c)
    scale: torch.Tensor  # float32 [blocks, K // 32, 16]
    offset: torch.Tensor | None  # float32 [blocks, K // 32, 16], or None
    shape: tuple[int, int]  # the weight's [N, K]
    bits: int  # 8 or 4
    zero: int  # subtracted from every code: 128 for 8-bit codes (stored + 128), 8 for Q4_0; 0 with an offset

    def __post_init__(self) -> None:
        self._call: tuple | None = None

    @classmethod
    def from_codes(cls, weight: GroupQuantized) -> Int8ActivationCodes:
        """Re-lay ``weight``'s codes for the int8 kernel (the same values; Q4_0's offset ``-8 * scale``
        becomes the integer zero point 8)."""
        n, k = weight.shape
        blocks, groups = -(-n // LANES), k // GROUP
        pad = blocks * LANES - n
        codes = F.pad(weight.unpacked().to(torch.int16), (0, 0, 0, pad))
        scale = F.pad(weight.scale, (0, 0, 0, pad)).view(blocks, LANES, groups).transpose(1, 2).contiguous()
        offset, zero = weight.offset, 0
        if weight.bits == 8:
            zero = 128  # signed codes, stored unsigned (vpdpbusd multiplies unsigned by signed bytes)
            chunks = (codes + 128).to(torch.uint8).view(blocks, LANES, groups, 8, 4)
        else:
            if offset is not None and torch.equal(offset, weight.scale * -8.0):
                offset, zero = None, 8
            nibbles = codes.to(torch.uint8).view(blocks, LANES, groups, 4, 2, 4)
            chunks = nibbles[:, :, :, :, 0] | (nibbles[:, :, :, :, 1] << 4)
        if offset is not None:
            if zero:  # the kernel's tiles with offsets take no zero point: s * (q - z) + o = s * q + (o - z * s)
                offset, zero = offset - zero * weight.scale, 0
            offset = F.pad(offset, (0, 0, 0, pad)).view(blocks, LANES, groups).transpose(1, 2).contiguous()
        laid = chunks.permute(0, 2, 3, 1, 4).contiguous().view(-1)  # [block, group, chunk, row, byte]
        return cls(laid, scale, offset, (n, k), weight.bits, zero)

    @property
    def nbytes(self) -> int:
        parts = [self.codes, self.scale] + ([self.offset] if self.offset is not None else [])
        return sum(t.numel() * t.element_size() for t in parts)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ W.T`` with ``x`` rounded to int8 per block of 32 (float32 in and out)."""
        if self._call is None:
            lib = native.library()
            if lib is None:
                raise RuntimeError(f"the int8-activation kernel needs the C kernels: {native.error()}")
            offset = self.offset.data_ptr() if self.offset is not None else None
            self._call = (lib.tl_qmatmul_i8, self.codes.data_ptr(), self.scale.data_ptr(), offset, *self.shape)
        kernel, q, s, o, n, k = self._call
        x, y = _operands(x, n, k)
        if kernel(q, s, o, x.data_ptr(), y.data_ptr(), x.shape[0], n, k, self.bits, self.zero):
            raise MemoryError("no memory for the rounded activations")
        return y


#: what a linear layer decodes from: float32 activations times codes, or int8 activations times codes
QuantizedWeight = GroupQuantized | Int8ActivationCodes


def round_groups(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` rounded to int8 per group of 32 by GGUF's Q8_0 rule (``scale = max|x| / 127``,
    codes ``round(x * (1 / scale))``): codes [M, K] (int8 values, as float32) and scales [M, K // 32].
    Lossy. The int8-activation kernel rounds its activations exactly so (this is its reference)."""
    m, k = x.shape
    if k % GROUP:
        raise ValueError(f"input size {k} is not a multiple of {GROUP}")
    groups = x.detach().float().cpu().reshape(m, k // GROUP, GROUP)
    scale = groups.abs().amax(dim=-1) / 127.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    codes = torch.round(groups * inverse[:, :, None]).clamp(-127, 127)
    return codes.view(m, k), scale


def quantize_int8(weight: torch.Tensor) -> GroupQuantized:
    """A weight as symmetric int8 codes per group of 32 (``round_groups``). Lossy."""
    codes, scale = round_groups(weight)
    return GroupQuantized(codes.to(torch.int8).contiguous(), scale.contiguous(), None)


def max_rows() -> int:
    """Up to how many rows the kernel beats float32 MKL on this machine (measured on 2 cores, the
    bundled model's projections): AVX2 build, about 32 rows; AVX-512 build (Zen 5), 192 rows still
    1.6x faster (14 vs 36 ms at 16 rows): 256."""
    return 256 if native.available() and native.lane_flags(native.kernel_flags()) else 32
