"""Pluggable heads, losses and samplers for cached features (each a registry).

``HEADS`` (zeroshot, linear, cosine, logreg, adapter, ensemble-logit, ensemble-feature, mlp, knn,
tip-adapter, tip-adapter-f, clip-adapter, lp++, clap, taskres), ``LOSSES``
(ce, focal, la, bs, cb, bce) and ``SAMPLERS`` (instance, wrs, rus, rus-fixed, sqrt). Heads are batched
over members (see :mod:`featcache.heads.base`); :mod:`featcache.heads.training` trains them;
:mod:`featcache.heads.tfa_lt_stages` trains TFA-LT's two stages for one or many configurations.
"""

from featcache.heads import (  # noqa: F401  (registers the heads)
    adapter,
    clap,
    clip_adapter,
    ensemble,
    knn,
    linear,
    logreg,
    lp_pp,
    mlp,
    taskres,
    tip_adapter,
    zeroshot,
)
from featcache.heads.base import (
    HEADS,
    Head,
    HeadContext,
    MemberSpec,
    build_head,
    load_head,
    register_head,
)
from featcache.heads.losses import LOSSES, ClassPrior, posthoc_adjust
from featcache.heads.samplers import SAMPLERS, Sampler, register_sampler
from featcache.heads.text import class_means, prototypes_for

__all__ = [
    "HEADS",
    "LOSSES",
    "SAMPLERS",
    "ClassPrior",
    "Head",
    "HeadContext",
    "MemberSpec",
    "Sampler",
    "build_head",
    "class_means",
    "load_head",
    "posthoc_adjust",
    "prototypes_for",
    "register_head",
    "register_sampler",
]
