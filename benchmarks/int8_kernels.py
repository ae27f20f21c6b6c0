"""Float32 vs int8 activations: the quantized product kernels, per build, at the bundled model's shapes.

For this CPU's build of the kernels and for the AVX2 build (compiled without AVX-512 whatever this
CPU has, so an AVX-512 machine can measure what an AVX2-only one runs), times one decode step's
products of SmolLM2-135M (30 layers of q/k/v/o, gate/up/down as random Q4_1 codes, and the head as
Q8_0 codes, as its GGUF has them) for M rows: ``tl_qmatmul`` (float32 activations) against ``tl_qmatmul_i8``
(activations rounded to int8), with the threads torch uses. Prints ms per step and the ratio.

    python benchmarks/int8_kernels.py [--rows 1 4 8 16 32]

The AVX2 build's figures on an AVX-512 machine are those of its instructions on this core, not of an
AVX2-only CPU (whose caches and ports differ): quote them as such.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

# (N, K) of one layer's projections, SmolLM2-135M: hidden 576, 9 heads x 64 (3 KV heads), MLP 1536
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
LAYERS = 30
HEAD = (49152, 576)  # the vocabulary


def step_ms(lib, weights, x_by_k, m: int, int8: bool, repeats: int) -> float:
    """Median ms of one step's products (every layer's projections and the head) for ``m`` rows."""
    calls = []
    for codes, laid in weights:
        n, k = codes.shape
        x, y = x_by_k[k][:m].contiguous(), torch.empty(m, n)
        w = laid if int8 else codes
        offset = w.offset.data_ptr() if w.offset is not None else None
        args = [w.codes.data_ptr(), w.scale.data_ptr(), offset, x.data_ptr(), y.data_ptr(), m, n, k]
        if int8:
            calls.append((lib.tl_qmatmul_i8, (*args, laid.bits, laid.zero), x, y))
        else:
            calls.append((lib.tl_qmatmul4 if codes.bits == 4 else lib.tl_qmatmul, tuple(args), x, y))
    head, layer = calls[-1], calls[:-1]
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(LAYERS):
            for kernel, args, _x, _y in layer:
                kernel(*args)
        head[0](*head[1])
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from tuneloop.engine import native
    from tuneloop.engine.quantized import GroupQuantized, Int8ActivationCodes

    flags = native.cpu_flags()
    builds = {"this CPU's build": native.library()}
    if "avx512f" in flags:
        builds["AVX2 build"] = native.load(native.build(flags - native.AVX512_FLAGS))
    g = torch.Generator().manual_seed(0)
    weights = []
    for n, k in SHAPES:  # Q4_1, as the GGUF's projections: 4-bit codes two per byte, scale and minimum
        scale, minimum = torch.rand(n, k // 32, generator=g) * 0.01, -torch.rand(n, k // 32, generator=g)
        codes = GroupQuantized(torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8), scale, minimum)
        weights.append((codes, Int8ActivationCodes.from_codes(codes)))
    n, k = HEAD  # Q8_0, as the GGUF's head
    head = GroupQuantized(torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8),
                          torch.rand(n, k // 32, generator=g) * 0.01, None)  # fmt: skip
    weights.append((head, Int8ActivationCodes.from_codes(head)))
    x_by_k = {k: torch.randn(max(args.rows), k, generator=g) for k in {k for _, k in [*SHAPES, HEAD]}}
    kind = "AVX-512" if "avx512f" in flags else "AVX2"
    vnni = " + VNNI" if "avx512_vnni" in flags else ""
    console = Console()
    table = Table(title=f"one decode step's products, ms ({kind}{vnni} CPU, {torch.get_num_threads()} threads)")
    for column in ("build", "rows", "float32 activations", "int8 activations", "int8 speed-up"):
        table.add_column(column, justify="right")
    for name, lib in builds.items():
        for m in args.rows:
            f32 = step_ms(lib, weights, x_by_k, m, False, args.repeats)
            i8 = step_ms(lib, weights, x_by_k, m, True, args.repeats)
            table.add_row(name, str(m), f"{f32:.2f}", f"{i8:.2f}", f"{f32 / i8:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
