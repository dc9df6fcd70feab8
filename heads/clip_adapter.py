"""``clip-adapter``: Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature
Adapters", IJCV 2023 (arXiv 2110.04544).

    A(f) = ReLU(W2 ReLU(W1 f)),   W1 [D/r, D], W2 [D, D/r] (no biases)
    f*   = ratio · A(f) + (1 − ratio) · f          # paper eq. (3), residual ratio α
    logits_c = cos(f*, t_c) / τ                    # t_c the text classifier, 1/τ = logit scale

As gaopengcuhk/CLIP-Adapter ``clip_adapter.py``: ``Adapter(c_in, reduction=4)`` is
``Linear(c_in, c_in // reduction, bias=False), ReLU, Linear(c_in // reduction, c_in,
bias=False), ReLU``, and ``ratio = 0.2`` in ``CustomCLIP.forward``. Defaults: reduction 4
(a shape knob), ratio 0.2. The repo trains with its own optimiser configs;
featcache uses the run's ``--lr/--epochs``. Init: nn.Linear's default
(U(±1/sqrt(fan_in))).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from featcache.errors import FeatcacheError
from featcache.heads.base import Head, knob, product, register_head, uniform_

_SRC = "Gao et al. 2023 (CLIP-Adapter) eq. 3; gaopengcuhk/CLIP-Adapter clip_adapter.py"


@register_head("clip-adapter")
class ClipAdapterHead(Head):
    """Residual bottleneck MLP on the image feature, cosine logits to the text classifier."""

    needs_prototypes = True
    needs_text = True

    @dataclass(frozen=True)
    class Knobs:
        reduction: int = knob(4, "Bottleneck reduction r (hidden width D // r).",
                              _SRC + " Adapter(c_in, reduction=4)", shape=True)
        ratio: float = knob(0.2, "Residual ratio α of the adapted feature.",
                            _SRC + " ratio = 0.2")

        def __post_init__(self) -> None:
            if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) \
                    or self.reduction < 1:
                raise FeatcacheError(f"Head 'clip-adapter': reduction={self.reduction!r} is "
                                     "invalid: expected an integer >= 1.")
            if not (isinstance(self.ratio, int | float) and 0 <= self.ratio <= 1):
                raise FeatcacheError(f"Head 'clip-adapter': ratio={self.ratio!r} is invalid: "
                                     "expected 0 <= ratio <= 1.")

    def __init__(self, ctx, members, *, device=None, dtype=None) -> None:  # noqa: ANN001
        super().__init__(ctx, members, device=device, dtype=dtype)
        self.register_buffer("ratio", torch.tensor([k.ratio for k in self.knobs], device=device))

    def init_params(self, g: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        D = self.in_dim
        H = max(1, D // self.knobs[g].reduction)
        return {"down": uniform_((H, D), 1 / math.sqrt(D), gen),  # W1 [H, D]
                "up": uniform_((D, H), 1 / math.sqrt(H), gen)}  # W2 [D, H]

    def out_dim(self) -> int:
        return self.in_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, D]
        self.check_input(x)
        dt = self.product_dtype(self.down[0].numel())
        # the down-projection stays fp32: two chained half products put bf16's gradient
        # error over 2 % (tests/test_heads.py); the up-projection runs in the half dtype
        h = torch.relu(torch.bmm(x, self.down.transpose(1, 2)))  # [G, B, H]
        a = torch.relu(product(torch.bmm, h, self.up.transpose(1, 2), dt))  # [G, B, D]
        r = self.ratio[:, None, None]
        return r * a + (1 - r) * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [G, B, D] -> [G, B, C]
        return self.prototype_logits(self.features(x))
