"""Training rows kept by a head (k-NN's neighbours, Tip-Adapter's key-value cache), per member.

Members (seeds) have pools of different sizes, so keys are padded to the longest pool: padded
keys are zero vectors whose value rows are zero (they add nothing to a vote or a cache logit)
and whose ``valid`` flag is False (k-NN never picks them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_rows(inputs: torch.Tensor, labels: torch.Tensor, pools: list[torch.Tensor],
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keys [G, n, D] L2-normalised, values [G, n, C] one-hot (multi-hot), valid [G, n])``
    for ``inputs`` ``[N, D]`` (or ``[G, N, D]``), ``labels`` ``[N]`` (or ``[N, C]``)."""
    G, n = len(pools), max((int(p.numel()) for p in pools), default=0)
    D = inputs.shape[-1]
    keys = inputs.new_zeros(G, n, D, dtype=torch.float32)
    values = inputs.new_zeros(G, n, num_classes, dtype=torch.float32)
    valid = torch.zeros(G, n, dtype=torch.bool, device=inputs.device)
    for g, pool in enumerate(pools):
        x = inputs[pool] if inputs.dim() == 2 else inputs[g, pool]
        y = labels[pool]
        m = pool.numel()
        keys[g, :m] = F.normalize(x.float(), dim=-1)
        values[g, :m] = y.float() if y.dim() == 2 else F.one_hot(y, num_classes).float()
        valid[g, :m] = True
    return keys, values, valid
