"""Time the MedMNIST benchmark's linear probes (members of the one batched trainer).

Synthetic learnable features shaped like one benchmark cell: PneumoniaMNIST's 4,708 training
rows (2 classes) of a 64-d feature, and the fast recipe's grid: 3 learning rates × 3 seeds ×
(full set, 10 and 100 per class) = 27 members of 1,000 AdamW iterations at batch 128, with the
val-ACC checks of FMMIC's rule. Prints seconds per cell and writes JSON.

    PYTHONPATH=$PWD python benchmarks/bench_probes.py [--rows 4708] [--dim 64] [--iterations 1000]
        [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from featcache.pipelines.bench_medmnist import (
    ProbeRecipe,
    check_iterations,
    per_class_subset,
    train_probes,
)


def main() -> None:
    """Train the probes of one cell ``--repeats`` times and print the seconds."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=4708)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.rows)
    x = rng.normal(size=(args.classes, args.dim))[y] * 0.3 + rng.normal(size=(args.rows, args.dim))
    feats = torch.tensor(x, dtype=torch.float32, device=dev)
    labels = torch.tensor(y, device=dev)
    rows = np.arange(args.rows)
    lrs, seeds = (1e-4, 1e-3, 1e-2), (0, 1, 2)
    pools, member_lrs, member_seeds = [], [], []
    for s in seeds:
        for pool in (rows, per_class_subset(y, rows, 10, s), per_class_subset(y, rows, 100, s)):
            for lr in lrs:
                pools.append(pool)
                member_lrs.append(lr)
                member_seeds.append(s)
    recipe = ProbeRecipe(iterations=args.iterations, batch_size=args.batch_size)
    checks = set().union(*(check_iterations(len(p), args.batch_size, args.iterations, 10) for p in pools))
    print(f"{len(pools)} members, {args.iterations} iterations, batch {args.batch_size}, "
          f"{args.rows} rows × {args.dim} d, {len(checks)} check iterations, device {dev}, "
          f"torch threads {torch.get_num_threads()}")
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        train_probes(feats, labels, pools, member_lrs, member_seeds, recipe, args.classes,
                     checkpoint_at=checks, on_checkpoint=lambda *_: None)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        print(f"  one cell's probes: {seconds[-1]:.2f} s")
    out = {"members": len(pools), "iterations": args.iterations, "batch_size": args.batch_size,
           "rows": args.rows, "dim": args.dim, "device": str(dev), "seconds": seconds,
           "best_seconds": min(seconds)}
    print(f"best of {args.repeats}: {min(seconds):.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
