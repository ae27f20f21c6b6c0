"""The residual add + RMSNorm and SiLU gating kernels against transformers' own modules."""

from __future__ import annotations

import pytest
import torch

from tuneloop.engine import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no C kernels here: {native.error()}")


def add_rmsnorm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    native.library().tl_add_rmsnorm(x.data_ptr(), None if delta is None else delta.data_ptr(), weight.data_ptr(),
                                    eps, out.data_ptr(), x.shape[0], x.shape[1])  # fmt: skip
    return out


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_add_rmsnorm_matches_llama_rmsnorm(rows):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(rows)
    norm = LlamaRMSNorm(96, eps=1e-5)
    norm.weight.data = torch.randn(96, generator=g)
    x, delta = torch.randn(rows, 96, generator=g) * 3, torch.randn(rows, 96, generator=g)
    expected_x = x + delta
    with torch.no_grad():
        expected = norm(expected_x)
    out = add_rmsnorm(x, delta, norm.weight.data, 1e-5)
    assert torch.allclose(x, expected_x)  # the residual add happened in place
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(add_rmsnorm(x.clone(), None, norm.weight.data, 1e-5), expected, rtol=1e-5, atol=1e-5)
    alone = add_rmsnorm(expected_x[-1:].clone(), None, norm.weight.data, 1e-5)
    assert torch.equal(alone[0], add_rmsnorm(expected_x.clone(), None, norm.weight.data, 1e-5)[-1])


@pytest.mark.parametrize("rows", [1, 9])
def test_silu_mul_matches_torch_over_the_whole_range(rows):
    gate = torch.linspace(-120, 120, rows * 1000).reshape(rows, 1000)  # far beyond e^x's float range
    up = torch.randn(rows, 1000, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(gate)
    native.library().tl_silu_mul(gate.data_ptr(), up.data_ptr(), out.data_ptr(), rows, 1000)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.nn.functional.silu(gate) * up, rtol=1e-5, atol=1e-6)
