"""``lp++``: Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024.

    w_c = v_c + α_c · t_c,   logits_c = f · w_cᵀ         # paper eq. (3)

v_c learnable visual class weights, initialised to the class means of the (L2-normalised)
training features (the paper's "visual prototypes" initialisation, §3); α_c class-wise
learnable multipliers of the text embeddings t_c, initialised to 1 (featcache's choice:
FereshteShakeri/FewShot-CLIP-Strong-Baseline initialises them from the zero-shot fit, not
reproduced here). LP++ optimises with full-batch gradient descent and step sizes from
Lipschitz constants (§3.2); featcache trains with its SGD trainer and the run's ``--lr``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, product, register_head


@register_head("lp++")
class LpPlusPlusHead(Head):
    """Class weights ``v_c + α_c t_c``: visual prototypes blended with text embeddings."""

    needs_prototypes = True
    needs_text = True

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        C, D = self.num_classes, self.in_dim
        if self.ctx.loading or self.ctx.class_means is None:
            visual = torch.zeros(C, D)
        else:
            means = self.ctx.class_means
            visual = (means[g] if means.dim() == 3 else means).detach().float().cpu().clone()
        if visual.shape != (C, D) or self.prototypes.shape[-1] != D:
            raise FeatcacheError(f"Head 'lp++' needs {D}-d class means and text embeddings.")
        return {"visual": visual, "text_scale": torch.ones(C)}  # v [C, D], α [C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        w = self.visual + self.text_scale[..., None] * self.prototypes  # [G, C, D]
        f = F.normalize(x, dim=-1)
        return product(torch.bmm, f, w.transpose(1, 2), self.product_dtype(w[0].numel()))
