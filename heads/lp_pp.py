"""``lp++``: Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024.

    logits = (V f + b) + α ⊙ (f · Tᵀ)        # class c: v_c·f + b_c + α_c t_c·f

As FereshteShakeri/FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py``
(``LinearProbe_P2.forward``): ``vision_logits = classifier(features)`` (an ``nn.Linear`` with
bias, weight initialised to the class centroids of the L2-normalised training features),
``text_logits = features @ text_weights`` and ``logits = vision_logits + alpha_vec *
text_logits``, with the class-wise multipliers ``alpha_vec`` all initialised to one number,
``calculate_init_alpha``: 250 × the mean over classes c, c' of the class-c centroid of the
text logits f·t_c'. featcache sets V and α that way from each member's training rows in
:meth:`LpPlusPlusHead.attach_data` (before it, V is the cache's class means and α = 1).

Difference (written down): LP++ trains full-batch with step sizes from Lipschitz constants
(``calculate_lr_w`` = 4N/λ_max(FᵀF), ``calculate_lr_alpha``; α updated every 10 epochs) and
picks the test epoch on a validation set; featcache trains V, b and α jointly with its SGD
trainer and the run's ``--lr/--epochs/--batch-size``, and reports the last epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, product, register_head

INIT_ALPHA_SCALE = 250.0  # linear_probe_p2.py calculate_init_alpha: 250 / shots * (alpha_tilde * shots)


@register_head("lp++")
class LpPlusPlusHead(Head):
    """Class weights ``v_c + α_c t_c``: visual prototypes blended with text embeddings."""

    needs_prototypes = True
    needs_text = True

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        C, D = self.num_classes, self.in_dim
        if self.prototypes.shape[-1] != D:
            raise FeatcacheError(f"Head 'lp++' needs {D}-d text embeddings, got "
                                 f"{self.prototypes.shape[-1]}-d ones.")
        means = self.ctx.class_means
        if self.ctx.loading or means is None:
            visual = torch.zeros(C, D)
        else:
            visual = (means[g] if means.dim() == 3 else means).detach().float().cpu().clone()
        return {"visual": visual, "bias": torch.zeros(C), "text_scale": torch.ones(C)}

    def attach_data(self, inputs, labels, pools) -> None:  # noqa: ANN001
        """V = class centroids of the normalised training features; α_c = LP++'s init."""
        if labels.dim() != 1:
            raise FeatcacheError("Head 'lp++' needs single-label data.")
        with torch.no_grad():
            for g, pool in enumerate(pools):
                x = F.normalize((inputs[pool] if inputs.dim() == 2 else inputs[g, pool]).float(), dim=-1)
                onehot = F.one_hot(labels[pool], self.num_classes).float()  # [n, C]
                centroids = onehot.T @ x / onehot.sum(0).clamp_min(1)[:, None]  # [C, D]
                text_centroids = centroids @ self.prototypes[g].T  # [C, C]: class means of f·T
                self.visual[g] = centroids
                self.text_scale[g] = INIT_ALPHA_SCALE * text_centroids.mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        w = self.visual + self.text_scale[..., None] * self.prototypes  # [G, C, D]
        f = F.normalize(x, dim=-1)
        logits = product(torch.bmm, f, w.transpose(1, 2), self.product_dtype(w[0].numel()))
        return logits + self.bias[:, None, :]
