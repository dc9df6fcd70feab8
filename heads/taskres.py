"""``taskres``: Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023.

    W = T + α · R,   R learnable, initialised to zero   # paper eq. (3)
    logits_c = cos(f, w_c) / τ

T the text classifier (frozen), R the task residual; α = 0.5 (the paper's default scale).
As geekyutao/TaskRes ``trainers/taskres.py``: ``TaskResLearner.forward`` returns
``base_text_features + self.alpha * self.text_feature_residuals`` (R = ``zeros_like``, α =
``cfg.TRAINER.TaskRes.RESIDUAL_SCALE``) and ``CustomCLIP.forward`` L2-normalises image and
text features and multiplies by ``logit_scale.exp()`` (1/τ here). With R = 0 the head is
zero-shot CLIP exactly. Difference: TaskRes's base T is the un-normalised mean of its
templates' text features; featcache's prototypes are L2-normalised (the scale of α·R relative
to T differs by |T|).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, knob, product, register_head


@register_head("taskres")
class TaskResHead(Head):
    """Text classifier plus a learnable residual ``α R`` (R = 0 at init)."""

    needs_prototypes = True
    needs_text = True

    @dataclass(frozen=True)
    class Knobs:
        alpha: float = knob(0.5, "Scale α of the task residual.",
                            "Yu et al. 2023 (TaskRes) eq. 3, §4.1; geekyutao/TaskRes")

        def __post_init__(self) -> None:
            if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)):
                raise FeatcacheError(f"Head 'taskres': alpha={self.alpha!r} is invalid: "
                                     "expected a finite number.")

    def __init__(self, ctx, members, *, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__(ctx, members, device=device, dtype=dtype)
        self.register_buffer("alpha", torch.tensor([k.alpha for k in self.knobs], device=device))

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"residual": torch.zeros(self.num_classes, self.prototypes.shape[-1])}  # R [C, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        w = F.normalize(self.prototypes + self.alpha[:, None, None] * self.residual, dim=-1)
        f = F.normalize(x, dim=-1)
        dt = self.product_dtype(w[0].numel())
        return product(torch.bmm, f, w.transpose(1, 2), dt) / self.tau[:, None, None]
