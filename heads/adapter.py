"""``adapter``: TFA-LT's residual adapter with a learnable sigmoid gate (DESIGN.md §1).

    f_v = sigmoid(λ)·f + (1 − sigmoid(λ))·(A f + a),   logits_c = cos(f_v, t_c) / τ

A ∈ R^{d×d} with nn.Linear's default init, λ = 0 (a 0.5 gate; the paper gives no init),
τ = 1/logit_scale by default. ``features`` returns f_v (stage II's feature ensembler uses it).
"""

from __future__ import annotations

import math

import torch

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, register_head, uniform_


@register_head("adapter")
class AdapterHead(Head):
    """TFA-LT residual adapter + cosine logits to class prototypes."""

    needs_prototypes = True

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.prototypes.shape[-1] != self.in_dim:
            raise FeatcacheError(
                f"Head 'adapter' compares {self.in_dim}-d features with "
                f"{self.prototypes.shape[-1]}-d prototypes; they must have the same width."
            )
        bound = 1.0 / math.sqrt(self.in_dim)
        return {
            "weight": uniform_((self.in_dim, self.in_dim), bound, gen),  # A [D, D]
            "bias": uniform_((self.in_dim,), bound, gen),  # a [D]
            "gate": torch.zeros(()),  # λ
        }

    def out_dim(self) -> int:
        return self.in_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, D]
        self.check_input(x)
        g = torch.sigmoid(self.gate)[:, None, None]  # [G, 1, 1]
        ax = self.linear(x)  # [G, B, D]
        return torch.lerp(ax, x, g)  # g·x + (1 − g)·(A x + a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        if torch.is_grad_enabled() and self.weight.requires_grad and not x.requires_grad:
            self.check_input(x)
            dtype = self.product_dtype(self.weight[0].numel())
            low = self.scratch("weight", self.weight, dtype) if dtype != torch.float32 else None
            return _AdapterCosine.apply(x, self.weight, self.bias, self.gate, self.prototypes,
                                        self.tau, self.scratch("weight", self.weight), low)
        return self.prototype_logits(self.features(x))


class _AdapterCosine(torch.autograd.Function):
    """The training step's adapter + cosine logits as one function with a hand-written backward.

    Same forward as :meth:`AdapterHead.features` then :meth:`Head.prototype_logits`, in fewer passes
    over ``[G, B, D]``: f = lerp(A x + a, x, g), logits = (f / |f|) · (t / τ). Backward (x needs
    no gradient): dn = dz (t/τ); df = (dn − n ⟨dn, n⟩) / |f|; dλ = σ'(λ) Σ df ⊙ (x − A x − a);
    d(Ax + a) = (1 − g) df; dA = d(Ax + a)ᵀ x (into a buffer kept across steps).

    Mixed precision (``low_weight`` given, a reused bf16/fp16 buffer of A's shape): the two
    ``[B, D] × [D, D]`` products, A x and d(Ax + a)ᵀ x, take their operands in that dtype
    (A is copied into ``low_weight`` once per step); everything else, the residual, the
    normalisation, the logits against the prototypes and dA itself, stays fp32. Its backward
    (:meth:`_half_backward`) is the same math in fewer passes over ``[G, B, D]``; the fp32
    backward keeps its original arithmetic, so fp32 results are unchanged bit for bit.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gate, protos, tau, grad_buffer, low_weight):  # noqa: ANN001, ANN205
        g = torch.sigmoid(gate)[:, None, None]  # [G, 1, 1]
        if low_weight is None:
            x_low = x
            ax = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))  # [G, B, D]
        else:
            x_low = x.to(low_weight.dtype)
            ax = torch.bmm(x_low, low_weight.copy_(weight).transpose(1, 2))  # [G, B, D] half
            ax = torch.add(ax, bias[:, None, :])  # fp32 from here on
        f = torch.lerp(ax, x, g)
        norm = torch.linalg.vector_norm(f, dim=-1, keepdim=True).clamp_min_(1e-12)  # [G, B, 1]
        n = f.div_(norm)  # f is ours: normalised in place
        t = protos / tau[:, None, None]  # [G, C, D], the scaled prototypes
        z = torch.bmm(n, t.transpose(1, 2))  # [G, B, C]
        ctx.save_for_backward(x, x_low, n, norm, ax, g, t, z)
        ctx.grad_buffer = grad_buffer
        return z

    @staticmethod
    def backward(ctx, dz):  # noqa: ANN001, ANN205
        x, x_low, n, norm, ax, g, t, z = ctx.saved_tensors
        if x_low.dtype != torch.float32:
            return _AdapterCosine._half_backward(ctx, dz.contiguous())
        dn = torch.bmm(dz.contiguous(), t)  # [G, B, D]
        dot = (dn * n).sum(-1, keepdim=True)  # [G, B, 1]
        df = dn.sub_(n * dot).div_(norm)  # [G, B, D]
        dgate = (df * (x - ax)).sum((1, 2)) * (g * (1 - g)).view(-1)  # [G]
        dax = df.mul_(1 - g)
        dw = torch.bmm(dax.transpose(1, 2), x, out=ctx.grad_buffer)  # [G, D, D]
        return None, dw, dax.sum(1), dgate, None, None, None, None

    @staticmethod
    def _half_backward(ctx, dz):  # noqa: ANN001, ANN205
        """The backward above in 6 passes over ``[G, B, D]`` instead of 12.

        ⟨dn, n⟩ = ⟨dz t, n⟩ = ⟨dz, z⟩ (z = n tᵀ, the logits) is a sum over C, not D; df comes
        out of one ``baddbmm``: df = (dz/|f|) t − n ⟨dz, z⟩/|f|; d(Ax + a) is written straight
        into the half dtype for the dA product, whose result is copied to the fp32 buffer.
        """
        x, x_low, n, norm, ax, g, t, z = ctx.saved_tensors
        r = norm.reciprocal()  # [G, B, 1]
        dot = (dz * z).sum(-1, keepdim=True)  # [G, B, 1]
        df = torch.baddbmm(n * (-dot * r), dz * r, t)  # [G, B, D]
        G = df.shape[0]
        dgate = torch.linalg.vecdot(df.view(G, -1), (x - ax).view(G, -1)) * (g * (1 - g)).view(-1)
        dax_low = torch.empty_like(x_low)
        torch.mul(df, 1 - g, out=dax_low)  # d(Ax + a) in the half dtype
        dw = ctx.grad_buffer.copy_(torch.bmm(dax_low.transpose(1, 2), x_low))  # [G, D, D] fp32
        return None, dw, df.sum(1) * (1 - g).view(G, 1), dgate, None, None, None, None
