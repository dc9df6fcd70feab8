"""``adapter``: TFA-LT's residual adapter with a learnable sigmoid gate (DESIGN.md §1).

    f_v = sigmoid(λ)·f + (1 − sigmoid(λ))·(A f + a),   logits_c = cos(f_v, t_c) / τ

A ∈ R^{d×d} with nn.Linear's default init, λ = 0 (a 0.5 gate; the paper gives no init),
τ = 1/logit_scale by default. ``features`` returns f_v (stage II's feature ensembler uses it).
"""

from __future__ import annotations

import math

import torch

from featcache.errors import FeatcacheError
from heads.base import Head, cosine_logits, register_head, uniform_


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
        return cosine_logits(self.features(x), self.prototypes, 1.0 / self.tau)
