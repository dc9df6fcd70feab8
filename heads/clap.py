"""``clap``: Silva-Rodríguez et al., "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024 (CLAP: Class-Adaptive linear Probe).

    logits_c = cos(f, w_c) / τ,   W initialised to the zero-shot text classifier T
    loss     = CE + (1/C) Σ_c λ_c ‖w_c − t_c‖²           # the class-adaptive penalty

As jusiro/CLAP ``trainers/adapters.py``: ``init_MultiModal`` (W = the text features),
``zero_shot_constraint`` (``torch.mean(self.alpha_constraint * disimilitude)``, the l2
dissimilitude ``(prototypes - base_text_features).pow(2).sum(-1)``, added to each batch's
loss), ``init_lagrangian_multipliers`` (λ_c = the mean zero-shot softmax probability of class c
on its own training (support) samples: ``diag(softmax(logits).T @ onehot) / onehot.sum(0)``),
and logits from L2-normalised features and prototypes times CLIP's logit scale (1/τ). Classes
the zero-shot classifier already gets right stay closer to their text prototype.
``penalty_scale`` multiplies every λ_c (default 1); ``inf`` keeps W at T exactly (zero-shot).
The paper refines λ with an augmented-Lagrangian scheme; featcache keeps the initial λ fixed
(not reproduced). The penalty enters as a gradient ``2 λ_c (w_c − t_c) / C`` added in backward
(:class:`_Penalty`), so the run's SGD trainer optimises CE + penalty; SGD is stable for
``2 · lr · λ_c < 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, knob, product, register_head


@register_head("clap")
class ClapHead(Head):
    """Linear probe from the zero-shot classifier, pulled back to it class by class."""

    needs_prototypes = True
    needs_text = True

    @dataclass(frozen=True)
    class Knobs:
        penalty_scale: float = knob(1.0, "Multiplier of the class-adaptive penalty λ_c (inf: "
                                    "frozen at zero-shot).",
                                    "Silva-Rodríguez et al. 2024 (CLAP) §4; jusiro/CLAP")

        def __post_init__(self) -> None:
            v = self.penalty_scale
            if not (isinstance(v, int | float) and v >= 0 and not math.isnan(v)):
                raise FeatcacheError(f"Head 'clap': penalty_scale={v!r} is invalid: expected "
                                     "a number >= 0 (or inf).")

    def __init__(self, ctx, members, *, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__(ctx, members, device=device, dtype=dtype)
        G, C = self.num_members, self.num_classes
        self.register_buffer("penalty", torch.full((G, C), 1.0 / C, device=device))  # λ_c / C
        scale = torch.tensor([k.penalty_scale for k in self.knobs], device=device)
        self.register_buffer("penalty_scale", scale)

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"weight": self.prototypes[g].detach().float().cpu().clone()}  # W [C, D] = T

    def attach_data(self, inputs, labels, pools) -> None:  # noqa: ANN001
        """λ_c / C: λ_c the mean zero-shot probability of class c on its own training rows."""
        if labels.dim() != 1:
            raise FeatcacheError("Head 'clap' needs single-label data.")
        with torch.no_grad():
            for g, pool in enumerate(pools):
                x = inputs[pool] if inputs.dim() == 2 else inputs[g, pool]
                y = labels[pool]
                z = F.normalize(x.float(), dim=-1) @ self.prototypes[g].T / self.tau[g]
                p = z.softmax(-1).gather(1, y[:, None])[:, 0]  # [n]
                sums = torch.zeros(self.num_classes, device=p.device).index_add_(0, y, p)
                counts = torch.bincount(y, minlength=self.num_classes).clamp_min(1)
                self.penalty[g] = sums / counts / self.num_classes  # torch.mean over classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        lam = self.penalty * self.penalty_scale[:, None]  # [G, C]
        frozen = torch.isinf(lam)[..., None]
        w = torch.where(frozen, self.prototypes, self.weight)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            w = _Penalty.apply(w, self.prototypes, torch.where(frozen[..., 0], 0.0, lam))
        w = F.normalize(w, dim=-1)
        f = F.normalize(x, dim=-1)
        return product(torch.bmm, f, w.transpose(1, 2), self.product_dtype(w[0].numel())) \
            / self.tau[:, None, None]


class _Penalty(torch.autograd.Function):
    """Identity on W whose backward adds ``2 λ_c (w_c − t_c)``: the gradient of the penalty."""

    @staticmethod
    def forward(ctx, w, t, lam):  # noqa: ANN001, ANN205
        ctx.save_for_backward(w, t, lam)
        return w.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        w, t, lam = ctx.saved_tensors
        return grad + 2 * lam[..., None] * (w - t), None, None
