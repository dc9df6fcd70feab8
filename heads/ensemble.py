"""TFA-LT's stage-II ensemblers (DESIGN.md §1), linear maps over the two frozen adapters.

- ``ensemble-logit``: z = K [l_w ; l_r] + b, K: R^{2C} → R^C (input: both adapters' logits).
- ``ensemble-feature``: z = cos(K [f_w ; f_r] + b, t_c) / τ, K: R^{2d} → R^d (input: both
  adapted features).
"""

from __future__ import annotations

import math

import torch

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, register_head, uniform_


@register_head("ensemble-logit")
class LogitEnsembleHead(Head):
    """A linear map of concatenated logits ``[G, B, 2C]`` to logits ``[G, B, C]``."""

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.in_dim != 2 * self.num_classes:
            raise FeatcacheError(
                f"Head 'ensemble-logit' takes two concatenated logit vectors (2C = "
                f"{2 * self.num_classes} wide) but was built for {self.in_dim}-d input."
            )
        bound = 1.0 / math.sqrt(self.in_dim)
        return {
            "weight": uniform_((self.num_classes, self.in_dim), bound, gen),  # K [C, 2C]
            "bias": uniform_((self.num_classes,), bound, gen),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, 2C] -> [G, B, C]
        self.check_input(x)
        return self.linear(x)


@register_head("ensemble-feature")
class FeatureEnsembleHead(Head):
    """A linear map of concatenated features ``[G, B, 2d]`` to ``d``, then cosine logits / τ."""

    needs_prototypes = True

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        d = self.prototypes.shape[-1]
        if self.in_dim != 2 * d:
            raise FeatcacheError(
                f"Head 'ensemble-feature' takes two concatenated {d}-d features (2d = {2 * d} "
                f"wide) but was built for {self.in_dim}-d input."
            )
        bound = 1.0 / math.sqrt(self.in_dim)
        return {
            "weight": uniform_((d, self.in_dim), bound, gen),  # K [d, 2d]
            "bias": uniform_((d,), bound, gen),
        }

    def out_dim(self) -> int:
        return self.prototypes.shape[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, 2d] -> [G, B, d]
        self.check_input(x)
        return self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, 2d] -> [G, B, C]
        return self.prototype_logits(self.features(x))
