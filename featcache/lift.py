"""The pieces of LIFT (ICML 2024) around the fine-tuned backbone: head, features, test-time ensembling.

- :class:`CosineClassifier`: ``z_k = sigma * cos(w_k, f)`` (sigma = 25, LIFT's ``scale``) on the
  pre-projection CLS feature, with LIFT's semantic-aware initialisation from text features
  (:func:`semantic_init_weights`: text embeddings ``[C, E]`` mapped through ``proj^T`` into the
  pre-projection space ``[C, W]`` and L2-normalised).
- :func:`pre_projection_features`: the ``ln_post`` CLS output ``[B, W]`` the head reads.
- Test-time ensembling (TTE) as LIFT's code does it: ``Resize(S + 24)`` (shorter side to
  ``S + 24``, aspect ratio kept, so the image is generally *not* square), then torchvision's
  ``FiveCrop(S)`` on that image (four corners and the centre), then the *logits* of the five
  crops are averaged (not the features). :func:`five_crop_boxes` gives the boxes,
  :func:`five_crops` cuts them, :func:`tte_logits` averages.

The fine-tuning methods themselves live in :mod:`featcache.peft`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import FeatcacheError
from featcache.models import image_features
from featcache.preprocess import TTE_EXPAND, TTE_VIEWS, five_crop_boxes, five_crops

__all__ = [
    "TTE_EXPAND",
    "TTE_VIEWS",
    "CosineClassifier",
    "five_crop_boxes",
    "cosine_logits",
    "five_crops",
    "pre_projection_features",
    "project_text",
    "semantic_init_weights",
    "tte_logits",
]

# TTE_EXPAND (LIFT's ``expand`` = 24) and TTE_VIEWS (the cache's names of the five crops, in
# the order five_crop_boxes / five_crops return them) have their home in featcache.preprocess.


def cosine_logits(
    feats: torch.Tensor,
    weight: torch.Tensor,
    scale: float | torch.Tensor | None,
    matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear,
    unit_weight: bool = False,
) -> torch.Tensor:
    """``scale · cos(f, w_c)`` for every class ``c``: the one cosine classifier's forward.

    ``feats`` ``[..., B, D]`` and ``weight`` ``[..., C, D]`` are L2-normalised along the last
    dim, then ``matmul(f̂, ŵ)`` gives ``f̂ ŵ^T`` ``[..., B, C]`` (default ``F.linear``;
    :class:`featcache.heads.linear.CosineHead` passes its batched, mixed-precision product) and
    the result is multiplied by ``scale`` (a number or a broadcastable tensor; ``None``: not
    scaled, for callers that scale after a reshape). ``unit_weight=True``: ``weight`` is already
    unit-norm (fixed text or class-mean prototypes, normalised once when the head is built) and
    is used as it is. Serves :class:`CosineClassifier` (LIFT's head in ``finetune``), the
    ``cosine`` head of :mod:`featcache.heads` and, through
    :meth:`featcache.heads.base.Head.prototype_logits`, every head that scores against fixed
    prototypes (zero-shot, TFA-LT's adapter and ensembler, CLIP-Adapter).
    """
    f = F.normalize(feats, dim=-1)
    w = weight if unit_weight else F.normalize(weight, dim=-1)
    logits = matmul(f, w)
    return logits if scale is None else logits * scale


def project_text(text_unit: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Unit text embeddings ``[C, E]`` into the pre-projection image space: ``normalize(t proj^T)``
    ``[C, W]`` (``proj`` is the visual projection ``[W, E]``). The one text-initialisation step,
    used by :func:`semantic_init_weights` and by :func:`featcache.heads.text.text_prototypes`
    (``--feature cls``)."""
    if text_unit.ndim != 2 or proj.ndim != 2 or text_unit.shape[1] != proj.shape[1]:
        raise FeatcacheError(
            f"Text features {tuple(text_unit.shape)} do not match the visual projection "
            f"{tuple(proj.shape)}: expected [C, E] and [W, E] with the same E. Use the text "
            "features of the same backbone as the image tower."
        )
    return F.normalize(text_unit @ proj.float().t(), dim=-1)  # [C, W]


def semantic_init_weights(text_feats: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """LIFT's semantic-aware head weights ``[C, W]`` from text embeddings ``[C, E]``.

    ``proj`` is the visual projection ``[W, E]`` (``visual.proj``): ``normalize(normalize(t) @ proj^T)``,
    as LIFT's ``init_head_text_feat`` (its text features are normalised before and after).
    """
    return project_text(F.normalize(text_feats.float(), dim=-1), proj)  # [C, W]


class CosineClassifier(nn.Module):
    """``z_k = scale * cos(w_k, f)``: LIFT's head on the pre-projection feature ``f`` [B, W].

    Random initialisation is uniform rows of unit norm (as LIFT's ``_Classifier``); use
    :meth:`init_from_text` for the semantic-aware initialisation LIFT trains from. LIFT's
    config sets ``scale = 25`` (its class default of 30 is overridden).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        scale: float = 25.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1 or not scale > 0:
            raise FeatcacheError(
                f"CosineClassifier needs in_dim >= 1, num_classes >= 1 and scale > 0, got "
                f"in_dim={in_dim}, num_classes={num_classes}, scale={scale}."
            )
        self.in_dim, self.num_classes, self.scale = in_dim, num_classes, float(scale)
        weight = torch.empty(num_classes, in_dim, device=device, dtype=dtype).uniform_(-1, 1)
        self.weight = nn.Parameter(F.normalize(weight, dim=-1))  # [C, W]

    @torch.no_grad()
    def init_from_text(self, text_feats: torch.Tensor, proj: torch.Tensor) -> CosineClassifier:
        """Set the weights from text embeddings ``[C, E]`` through ``proj`` ``[W, E]``; returns self."""
        weight = semantic_init_weights(text_feats, proj)  # [C, W]
        if weight.shape != self.weight.shape:
            raise FeatcacheError(
                f"Semantic initialisation gives weights {tuple(weight.shape)}, but this head is "
                f"[{self.num_classes}, {self.in_dim}] (classes x feature width)."
            )
        self.weight.copy_(weight.to(self.weight.dtype))
        return self

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Features ``[B, W]`` (any float dtype) -> fp32 logits ``[B, C]``, also under autocast.

        The head runs in fp32 with autocast switched off: ``sigma * cos`` in bf16 has ~8 bits
        of mantissa, so on 1000 classes a row holds only a few hundred distinct logits and the
        argmax drifts from fp32's. LIFT computes the head inside its fp16 autocast
        (shijxcs/LIFT trainer.py:453-455, ``F.linear`` in models/classifiers.py:41); keeping it
        in fp32 is a deliberate difference (README, LIFT section). Costs one ``[B, W] x [W, C]``
        fp32 product per step.
        """
        if feats.shape[-1] != self.in_dim:
            raise FeatcacheError(
                f"CosineClassifier expects features of width {self.in_dim}, got {feats.shape[-1]}."
            )
        with torch.autocast(feats.device.type, enabled=False):
            return cosine_logits(feats.float(), self.weight.float(), self.scale)  # [B, C] fp32

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, scale={self.scale}"


def pre_projection_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pre-projection CLS feature ``[B, W]`` (pooled ``ln_post`` output) of ``images`` [B, 3, S, S].

    Runs whatever methods :mod:`featcache.peft` injected into ``visual``.
    """
    return image_features(visual, images)[1]


def tte_logits(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    size: int | None = None,
    expand: int = TTE_EXPAND,
) -> torch.Tensor:
    """LIFT's test-time ensemble: the mean of ``fn``'s logits over five crops.

    ``images``: either ``[B, C, H, W]`` already resized so the shorter side is ``S + expand``
    (crops of ``size`` = ``S``, by default ``min(H, W) - expand``, are cut here), or the crops
    themselves ``[B, 5, C, S, S]`` (a dataset's ``FiveCrop`` output). ``fn`` maps images
    ``[N, C, S, S]`` to logits ``[N, K]``; all five crops go through it in one call. Returns
    ``[B, K]``: logits are averaged, not features (LIFT's ``output.view(B, 5, -1).mean(1)``).
    """
    if images.ndim == 5:
        crops = images  # [B, 5, C, S, S]
    elif images.ndim == 4:
        if size is None:
            size = min(images.shape[-2:]) - expand
        crops = five_crops(images, size)  # [B, 5, C, S, S]
    else:
        raise FeatcacheError(
            f"tte_logits expects images [B, C, H, W] or crops [B, 5, C, S, S], got shape {tuple(images.shape)}."
        )
    batch, views = crops.shape[:2]
    logits = fn(crops.flatten(0, 1))  # [B*5, K]
    return logits.view(batch, views, -1).mean(dim=1)  # [B, K]
