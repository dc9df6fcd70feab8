"""``knn``: weighted cosine k-nearest-neighbour vote on the training features, nothing trained.

The DINO/DINOv2 k-NN evaluation (Caron et al. 2021, "Emerging properties in self-supervised
vision transformers", §4.1 / appendix; code: facebookresearch/dino ``eval_knn.py``,
``knn_classifier``): features L2-normalised, the k most cosine-similar training features
vote for their labels with weight ``exp(cos / T)``; defaults ``k = 20`` and ``T = 0.07``
(``eval_knn.py``: ``--nb_knn`` default [10, 20, 100, 200], the paper reports k = 20;
``--temperature 0.07``).

Logits are ``log(vote_c / Σ vote)`` (the normalised vote; softmax of them gives it back).
The training rows are stored by :meth:`KnnHead.attach_data`, which the trainer calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, knob, register_head
from featcache.heads.cache_keys import padded_rows


@register_head("knn")
class KnnHead(Head):
    """Cosine k-NN with ``exp(cos/T)``-weighted votes (DINO's ``knn_classifier``)."""

    trainable = False
    data_shaped = ("keys", "values", "valid")

    @dataclass(frozen=True)
    class Knobs:
        k: int = knob(20, "Neighbours that vote.", "DINO (Caron et al. 2021) §4.1, k = 20; "
                      "facebookresearch/dino eval_knn.py --nb_knn")
        temperature: float = knob(0.07, "Vote weight exp(cos / T).",
                                  "facebookresearch/dino eval_knn.py --temperature 0.07")

        def __post_init__(self) -> None:
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise FeatcacheError(f"Head 'knn': k={self.k!r} is invalid: expected an integer >= 1.")
            if not (self.temperature > 0 and math.isfinite(self.temperature)):
                raise FeatcacheError(f"Head 'knn': temperature={self.temperature!r} is invalid: "
                                     "expected a finite number > 0.")

    def __init__(self, ctx, members, *, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__(ctx, members, device=device, dtype=dtype)
        G, D, C = self.num_members, self.in_dim, self.num_classes
        self.register_buffer("keys", torch.zeros(G, 0, D, device=device))  # [G, n, D]
        self.register_buffer("values", torch.zeros(G, 0, C, device=device))  # [G, n, C]
        self.register_buffer("valid", torch.zeros(G, 0, dtype=torch.bool, device=device))
        self.register_buffer("k", torch.tensor([kn.k for kn in self.knobs], device=device))
        self.register_buffer("temperature", torch.tensor(
            [kn.temperature for kn in self.knobs], dtype=torch.float32, device=device))

    def attach_data(self, inputs, labels, pools) -> None:  # noqa: ANN001
        self.keys, self.values, self.valid = padded_rows(inputs, labels, pools, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        self.check_input(x)
        G, B, _ = x.shape
        n = self.keys.shape[1]
        if n == 0:  # no training rows attached yet: a uniform vote
            return x.new_zeros(G, B, self.num_classes)
        sim = torch.bmm(F.normalize(x.float(), dim=-1), self.keys.transpose(1, 2))  # [G, B, n]
        sim = sim.masked_fill(~self.valid[:, None, :], -math.inf)
        kmax = min(int(self.k.max()), n)
        top, idx = sim.topk(kmax, dim=-1)  # [G, B, k]
        w = torch.exp(top / self.temperature[:, None, None])  # exp(-inf) = 0 for padding
        rank = torch.arange(kmax, device=x.device)
        w = w * (rank[None, :] < self.k[:, None])[:, None, :]  # each member's own k
        onehot = torch.gather(self.values[:, None].expand(G, B, n, -1), 2,
                              idx[..., None].expand(-1, -1, -1, self.num_classes))  # [G, B, k, C]
        votes = (w[..., None] * onehot).sum(2)  # [G, B, C]
        votes = votes / votes.sum(-1, keepdim=True).clamp_min(1e-30)
        return torch.log(votes.clamp_min(1e-12))
