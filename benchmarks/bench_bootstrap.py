"""Time :func:`featcache.class_metrics.bootstrap_ci` (``--bootstrap N``) on ISIC-sized test rows.

Synthetic informative scores: ``--rows`` test rows × ``--classes`` classes per seed (default
2,000 × 7, ISIC 2018's classes), ``--seeds`` seeds, ``--n`` replicates. Prints the seconds of
the best of ``--repeats`` calls and the intervals' keys; ``--json FILE`` writes them.

    PYTHONPATH=$PWD python benchmarks/bench_bootstrap.py [--n 1000] [--rows 2000] [--classes 7]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from featcache.class_metrics import bootstrap_ci


def main() -> None:
    """Run the timing and print one line per call."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--rows", type=int, default=2000, help="test rows per seed")
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    evals = []
    for _ in range(args.seeds):
        labels = rng.integers(0, args.classes, args.rows)
        scores = rng.normal(size=(args.rows, args.classes)) + 1.5 * np.eye(args.classes)[labels]
        evals.append((labels, scores))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = bootstrap_ci(evals, args.n, seed=0)
        times.append(time.perf_counter() - t0)
    keys = [k for k in out if k.endswith("_ci")]
    load = os.getloadavg()[0]
    print(f"bootstrap_ci: n {args.n}, {args.seeds} seed(s) × {args.rows} rows × {args.classes} classes: "
          f"best {min(times):.2f} s of {args.repeats} (load {load:.2f}); intervals {', '.join(keys)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "rows": args.rows, "classes": args.classes, "seeds": args.seeds,
                       "seconds": times, "best_s": min(times), "load_1min": load, "intervals": keys,
                       **{k: out[k] for k in keys}}, fh, indent=1)


if __name__ == "__main__":
    main()
