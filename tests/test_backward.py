"""The hand-written backward passes equal autograd's gradients of the same forward.

``_AdapterCosine`` (TFA-LT's adapter + cosine logits) and ``_BatchedLinear`` (the probes' and
ensemblers' batched ``x Wᵀ + b``) write their gradients by hand to save passes over
``[G, B, D]``; here each is compared with ``torch.autograd`` on the plain forward, in float64
(exact to rounding, the adapter) and fp32, and under bf16 products against the same products done in bf16.
"""

from __future__ import annotations

import pytest
import torch

from featcache.heads.adapter import _AdapterCosine
from featcache.heads.base import _BatchedLinear, bmm_t
from featcache.lift import cosine_logits

G, B, D, C = 3, 17, 24, 5


def _adapter_inputs(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    protos = torch.nn.functional.normalize(r(G, C, D), dim=-1)
    return {"x": r(G, B, D), "weight": r(G, D, D) / D**0.5, "bias": r(G, D) * 0.1,
            "gate": r(G), "protos": protos, "tau": torch.full((G,), 0.05, dtype=dtype)}


def _adapter_reference(x, weight, bias, gate, protos, tau):  # noqa: ANN001, ANN202
    """The plain forward of AdapterHead.features + cosine_logits, left to autograd."""
    g = torch.sigmoid(gate)[:, None, None]
    f = torch.lerp(torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2)), x, g)
    return cosine_logits(f, protos, (1.0 / tau)[:, None, None], matmul=bmm_t, unit_weight=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adapter_backward_equals_autograd(dtype: torch.dtype) -> None:
    a = _adapter_inputs(dtype)
    dz = torch.randn(G, B, C, generator=torch.Generator().manual_seed(1), dtype=dtype)
    params = [a["weight"], a["bias"], a["gate"]]
    for p in params:
        p.requires_grad_(True)
    z = _AdapterCosine.apply(a["x"], *params, a["protos"], a["tau"], torch.empty_like(a["weight"]), None)
    got = torch.autograd.grad(z, params, dz)
    ref_z = _adapter_reference(a["x"], *params, a["protos"], a["tau"])
    want = torch.autograd.grad(ref_z, params, dz)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(z, ref_z, **tol)
    for name, g, w in zip(("dA", "da", "dλ"), got, want, strict=True):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_adapter_half_backward_equals_autograd_of_half_products() -> None:
    """bf16: A x and d(Ax+a)ᵀ x in bf16, the rest fp32 — compared with autograd on the same."""
    a = _adapter_inputs(torch.float32, seed=2)
    dz = torch.randn(G, B, C, generator=torch.Generator().manual_seed(3))
    params = [a["weight"], a["bias"], a["gate"]]
    for p in params:
        p.requires_grad_(True)
    low = torch.empty(G, D, D, dtype=torch.bfloat16)
    z = _AdapterCosine.apply(a["x"], *params, a["protos"], a["tau"], torch.empty_like(a["weight"]), low)
    got = torch.autograd.grad(z, params, dz)

    def half_forward(x, weight, bias, gate, protos, tau):  # noqa: ANN001, ANN202
        g = torch.sigmoid(gate)[:, None, None]
        ax = torch.bmm(x.bfloat16(), weight.bfloat16().transpose(1, 2)).float() + bias[:, None, :]
        return cosine_logits(torch.lerp(ax, x, g), protos, (1.0 / tau)[:, None, None], matmul=bmm_t,
                             unit_weight=True)

    want = torch.autograd.grad(half_forward(a["x"], *params, a["protos"], a["tau"]), params, dz)
    # autograd's dA is a bf16 product too, but rounds d(Ax+a) at another point: bf16 tolerance
    for name, g, w in zip(("dA", "da", "dλ"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2 * w.abs().max().item(),
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("input_grad", [False, True])
def test_batched_linear_backward_equals_autograd(input_grad: bool) -> None:
    """fp32, the trainer's master precision (any other ``dtype`` means half products)."""
    dtype = torch.float32
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(G, B, D, generator=gen, dtype=dtype).requires_grad_(input_grad)
    weight = torch.randn(G, C, D, generator=gen, dtype=dtype).requires_grad_(True)
    bias = torch.randn(G, C, generator=gen, dtype=dtype).requires_grad_(True)
    dout = torch.randn(G, B, C, generator=gen, dtype=dtype)
    inputs = [x, weight, bias] if input_grad else [weight, bias]
    out = _BatchedLinear.apply(x, weight, bias, torch.empty_like(weight), dtype)
    got = torch.autograd.grad(out, inputs, dout)
    ref = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
    want = torch.autograd.grad(ref, inputs, dout)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_batched_linear_half_backward_equals_autograd_of_half_products() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(G, B, D, generator=gen).requires_grad_(True)
    weight = torch.randn(G, C, D, generator=gen).requires_grad_(True)
    bias = torch.randn(G, C, generator=gen).requires_grad_(True)
    dout = torch.randn(G, B, C, generator=gen)
    got = torch.autograd.grad(_BatchedLinear.apply(x, weight, bias, torch.empty_like(weight), torch.bfloat16),
                              [x, weight, bias], dout)
    ref = torch.bmm(x.bfloat16(), weight.bfloat16().transpose(1, 2)).float() + bias[:, None, :]
    want = torch.autograd.grad(ref, [x, weight, bias], dout)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2 * w.abs().max().item())
