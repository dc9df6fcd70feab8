"""Class prototypes for text-based heads: text features of a prompt, or class means.

TFA-LT compares adapted image features with the text feature of "The category of this
{data_type} image is {class_name}." (DESIGN.md §1); LIFT initialises its cosine classifier
from "a photo of a {}." mapped into the pre-projection space through proj^T (DESIGN.md §2).
Where a cache has no text features (a vision-only encoder), prototypes are the L2-normalised
class means of the training rows (``--text-source class-mean``), as LIFT does.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.lift import project_text

log = logging.getLogger(__name__)

TFA_LT_PREFIX = "the category of this"
LIFT_PREFIX = "a photo of a"


def pick_templates(templates: list[str], template: str = "auto") -> list[int]:
    """Indices of the templates to average, looked up by content, never by position.

    ``auto``: TFA-LT's "The category of this ... image is {}." when the cache has it, else
    "a photo of a {}.", else the mean over all templates. ``mean``: all templates. Any other
    string: the templates that equal it or contain it (case-insensitive).
    """
    if not templates:
        raise FeatcacheError("The cache holds no prompt templates (it has no text features).")
    low = [t.lower() for t in templates]
    if template == "mean":
        return list(range(len(templates)))
    if template == "auto":
        for prefix in (TFA_LT_PREFIX, LIFT_PREFIX):
            hits = [i for i, t in enumerate(low) if t.startswith(prefix)]
            if hits:
                return hits[:1]
        log.info("no TFA-LT or LIFT template in the cache; averaging all %d", len(templates))
        return list(range(len(templates)))
    hits = [i for i, t in enumerate(low) if t == template.lower()]
    hits = hits or [i for i, t in enumerate(low) if template.lower() in t]
    if not hits:
        raise FeatcacheError(
            f"No prompt template matches {template!r}. The cache has: "
            + "; ".join(repr(t) for t in templates)
            + ". Use --template auto|mean or part of one of these."
        )
    return hits


def text_prototypes(
    text_features: torch.Tensor,  # [T, C, E] L2-normalised
    templates: list[str],
    template: str = "auto",
    *,
    projection: torch.Tensor | None = None,  # [W, E]
    kind: str = "embed",
) -> torch.Tensor:
    """``[C, D]`` L2-normalised text prototypes in the space of ``kind`` features.

    For ``cls`` (pre-projection) features the text features are mapped through proj^T
    (``[C, E] @ [E, W]``) and normalised again: LIFT's semantic-aware initialisation.
    """
    idx = pick_templates(templates, template)
    protos = F.normalize(text_features[idx].float().mean(0), dim=-1)  # [C, E]
    if kind == "cls":
        if projection is None:
            raise FeatcacheError(
                "Text prototypes for --feature cls need the cache's visual projection, which "
                "this cache does not hold; use --feature embed or --text-source class-mean."
            )
        protos = project_text(protos, projection)  # [C, W], featcache.lift (LIFT's text init)
    return protos


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, D]`` L2-normalised mean of the L2-normalised features of each class.

    ``feats`` [n, D], ``labels`` [n] (or [n, C] multi-label: positives). A class with no rows
    gets a zero prototype (cosine 0 to everything).
    """
    f = F.normalize(feats.float(), dim=-1)
    onehot = labels.float() if labels.dim() == 2 else F.one_hot(labels, num_classes).float()
    sums = onehot.T @ f  # [C, D]
    return F.normalize(sums, dim=-1)


def prototypes_for(
    source: str,
    *,
    text_features: torch.Tensor | None,
    templates: list[str],
    template: str,
    projection: torch.Tensor | None,
    kind: str,
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, str]:
    """Prototypes ``[C, D]`` for ``--text-source prompts|class-mean|auto`` and what was used.

    ``auto`` uses prompts when the cache has text features, else class means.
    """
    if source not in ("auto", "prompts", "class-mean"):
        raise FeatcacheError(f"Unknown text source '{source}'. Choose from: auto, class-mean, prompts.")
    if source == "auto":
        source = "prompts" if text_features is not None else "class-mean"
    if source == "prompts":
        if text_features is None:
            raise FeatcacheError(
                "--text-source prompts needs text features, but this cache has none (a "
                "vision-only encoder?). Use --text-source class-mean."
            )
        idx = pick_templates(templates, template)
        used = "prompts: " + " | ".join(templates[i] for i in idx)
        protos = text_prototypes(text_features, templates, template, projection=projection, kind=kind)
        return protos, used
    return class_means(train_feats, train_labels, num_classes), "class-mean"
