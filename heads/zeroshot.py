"""``zeroshot``: cosine similarity to class prototypes (text features), nothing trained."""

from __future__ import annotations

import torch

from featcache.heads.base import Head, register_head


@register_head("zeroshot")
class ZeroShotHead(Head):
    """CLIP zero-shot: ``logits = cos(f, t_c) / τ`` (DESIGN.md §1 baseline, τ = 1/logit_scale)."""

    trainable = False
    needs_prototypes = True

    def out_dim(self) -> int:
        return self.in_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, D]
        """The frozen feature itself (TFA-LT's "ensembler only" ablation ensembles these)."""
        self.check_input(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        return self.prototype_logits(x)
