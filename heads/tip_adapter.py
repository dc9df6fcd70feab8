"""``tip-adapter`` (training-free) and ``tip-adapter-f`` (keys fine-tuned): Zhang et al.,
"Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022.

Eq. (6) of the paper, as in gaopengcuhk/Tip-Adapter ``main.py`` (``run_tip_adapter``)::

    affinity = f · Kᵀ                      # f, K L2-normalised; K the training features
    cache    = exp(−β (1 − affinity)) · L  # L the training labels, one-hot
    logits   = f · Wᵀ / τ + α · cache      # W the text classifier, 1/τ = CLIP's 100

Defaults α = 1, β = 5.5: the paper's §4.1 ("α = 1 ... β = 5.5" for the training-free
version). The repo's per-data-set YAMLs (``configs/*.yaml``, ``init_alpha``/``init_beta``)
start other data sets elsewhere and then search α, β on a validation set; that search is not
done here (a grid over ``alpha``/``beta`` with ``featcache grid --param`` does it, selected on
validation). Tip-Adapter's keys are the mean of 10 augmented views per image
(``augment_epoch``); featcache keys are the cached features of the training view.

``tip-adapter-f``: the same, with K a parameter initialised from the training features and
trained (the repo's ``adapter = nn.Linear(...)``, weight = cache keys, ``run_tip_adapter_F``);
the repo trains it with AdamW (lr 1e-3, eps 1e-4, cosine, 20 epochs, batch 256), featcache with
its own SGD trainer and the run's ``--lr/--epochs`` (pass e.g. ``--epochs 20``). Before the
trainer attaches the training rows (:meth:`attach_data`) the cache holds one key per class,
the class means, so the head is defined (and testable) on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, knob, product, register_head
from featcache.heads.cache_keys import padded_rows

_SRC = "Zhang et al. 2022 (Tip-Adapter) §4.1; gaopengcuhk/Tip-Adapter main.py run_tip_adapter"


@dataclass(frozen=True)
class TipKnobs:
    """Tip-Adapter's two knobs (both heads)."""

    alpha: float = knob(1.0, "Weight α of the cache logits.", _SRC)
    beta: float = knob(5.5, "Sharpness β of exp(-β(1 - cos)).", _SRC)

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise FeatcacheError(f"Tip-Adapter: {name}={v!r} is invalid: expected a finite "
                                     "number >= 0.")


@register_head("tip-adapter")
class TipAdapterHead(Head):
    """Zero-shot logits plus α times the key-value cache of the training features (eq. 6)."""

    trainable = False
    needs_prototypes = True
    needs_text = True
    data_shaped = ("keys", "values")
    Knobs = TipKnobs

    def __init__(self, ctx, members, *, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__(ctx, members, device=device, dtype=dtype)
        self.register_buffer("alpha", torch.tensor([k.alpha for k in self.knobs], device=device))
        self.register_buffer("beta", torch.tensor([k.beta for k in self.knobs], device=device))
        keys, values = self._class_mean_cache(device)
        self.register_buffer("keys", keys)  # [G, n, D]
        self.register_buffer("values", values)  # [G, n, C]

    def _class_mean_cache(self, device) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        """Before any training rows: one key per class (its mean), or none."""
        G, D, C = self.num_members, self.in_dim, self.num_classes
        means = self.ctx.class_means
        if means is None or self.ctx.loading:
            return torch.zeros(G, 0, D, device=device), torch.zeros(G, 0, C, device=device)
        means = means.expand(G, C, D) if means.dim() == 2 else means
        eye = torch.eye(C, device=device).expand(G, C, C)
        return F.normalize(means.float(), dim=-1).to(device).clone(), eye.clone()

    def attach_data(self, inputs, labels, pools) -> None:  # noqa: ANN001
        keys, values, _ = padded_rows(inputs, labels, pools, self.num_classes)
        self.values = values
        self.keys = keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        f = F.normalize(x, dim=-1)
        zero_shot = torch.bmm(f, self.prototypes.transpose(1, 2)) / self.tau[:, None, None]
        if self.keys.shape[1] == 0:
            return zero_shot
        dtype = self.product_dtype(self.keys[0].numel())
        affinity = product(torch.bmm, f, self.keys.transpose(1, 2), dtype)  # [G, B, n]
        beta = self.beta[:, None, None]
        cache = torch.bmm(torch.exp(-beta * (1 - affinity)), self.values)  # [G, B, C]
        return zero_shot + self.alpha[:, None, None] * cache


@register_head("tip-adapter-f")
class TipAdapterFHead(TipAdapterHead):
    """Tip-Adapter with the cache keys fine-tuned (Tip-Adapter-F, paper §3.3)."""

    trainable = True

    def __init__(self, ctx, members, *, device=None, dtype=None) -> None:  # noqa: ANN001
        Head.__init__(self, ctx, members, device=device, dtype=dtype)
        keys, values = self._class_mean_cache(device)
        self.register_parameter("keys", torch.nn.Parameter(keys))
        self.register_buffer("alpha", torch.tensor([k.alpha for k in self.knobs], device=device))
        self.register_buffer("beta", torch.tensor([k.beta for k in self.knobs], device=device))
        self.register_buffer("values", values)

    def attach_data(self, inputs, labels, pools) -> None:  # noqa: ANN001
        keys, values, _ = padded_rows(inputs, labels, pools, self.num_classes)
        self.values = values
        self.keys = torch.nn.Parameter(keys)
