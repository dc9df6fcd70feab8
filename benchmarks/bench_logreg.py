"""Time the ``logreg`` head's two L-BFGS solvers (scikit-learn, torch) on an ISIC-sized cache.

Synthetic learnable features: 8,400 rows × 512 dims, 7 long-tailed classes (ISIC 2018's
training counts after TFA-LT's 60-per-class test split). Prints seconds per single fit at a
few C values and for CLIP's whole C search + refit, and the largest probability difference
between the two solvers' classifiers.

    PYTHONPATH=$PWD python benchmarks/bench_logreg.py [--rows 8400] [--dim 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from featcache.heads.logreg import fit_logreg, search_c, stratified_val


def main() -> None:
    """Run the timing and print a small table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=8400)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--search", action="store_true", help="also time the whole C search")
    ap.add_argument("--skip-fits", action="store_true", help="skip the single fits")
    ap.add_argument("--solvers", default="sklearn,torch", help="solvers for the search")
    args = ap.parse_args()
    counts = np.array([6645, 1053, 1039, 454, 267, 82, 55], dtype=float)  # ISIC train - 60 each
    counts = np.round(counts / counts.sum() * args.rows).astype(int)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(7, args.dim))
    y = np.repeat(np.arange(7), counts)
    x = means[y] * 0.15 + rng.normal(size=(y.size, args.dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # CLIP embeddings are unit-norm-ish
    print(f"rows {y.size}, dim {args.dim}, torch threads {torch.get_num_threads()}")
    for c in () if args.skip_fits else (1e-2, 1.0, 1e2):
        out = {}
        for solver in ("sklearn", "torch"):
            t0 = time.perf_counter()
            W, b = fit_logreg(x, y, 7, c, solver=solver)
            out[solver] = (time.perf_counter() - t0, W, b)
        p = {s: torch.softmax(torch.as_tensor(x @ W.T + b), 1) for s, (_, W, b) in out.items()}
        diff = (p["sklearn"] - p["torch"]).abs().max().item()
        print(f"C={c:g}: sklearn {out['sklearn'][0]:.2f} s, torch {out['torch'][0]:.2f} s, "
              f"max |Δp| {diff:.1e}")
    if args.search:
        val = stratified_val(y, torch.Generator().manual_seed(0))
        for solver in args.solvers.split(","):
            t0 = time.perf_counter()
            c, tried = search_c(x, y, val, 7, solver=solver)
            fit_logreg(x, y, 7, c, solver=solver)
            print(f"search + refit ({solver}): {time.perf_counter() - t0:.1f} s, "
                  f"{len(tried) + 1} fits, C = {c:.3g}")


if __name__ == "__main__":
    main()
