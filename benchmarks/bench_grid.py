"""Benchmark: wall time of a 64-configuration grid against one configuration (DESIGN.md §6).

Same head, same data: an ISIC-sized random-feature cache (8,400 × 512, 7 classes with
ISIC 2018's long-tailed profile, 60 test images per class as in TFA-LT's protocol), SGD with
the TFA-LT recipe (batch 128, cosine, 200 epochs by default). The grid is 8 learning rates
× 8 weight decays; the single configuration is its first cell. Both go through
:func:`featcache.pipelines.grid.run` (training, val/test evaluation, the run directory), and the single
configuration is also timed through ``train-head`` (:func:`featcache.pipelines.train_head.run`), what a
user runs for one setting. Goal: grid ≤ 4 × one configuration.

    .venv/bin/python benchmarks/bench_grid.py [--epochs 200] [--seeds 0] [--head linear]
        [--device cpu] [--precision fp32|bf16] [--threads N] [--repeat 1] [--json bench_grid.json]

Prints the figures and writes them as JSON (with the machine, torch version, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures_cache import make_feature_cache  # noqa: E402

from featcache.pipelines import grid, train_head  # noqa: E402

# ISIC 2018 Task 3 class sizes (NV, MEL, BKL, BCC, AKIEC, VASC, DF) scaled to 8,400 rows.
ISIC_COUNTS = (6705, 1113, 1099, 514, 327, 142, 115)
LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
WDS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 5e-4, 1e-3, 3e-3)


def isic_sized_cache(path: Path, rows: int = 8400, dim: int = 512) -> Path:
    """A random-feature cache with ISIC 2018's class profile, ``rows`` × ``dim``."""
    total = sum(ISIC_COUNTS)
    counts = [max(61, round(c * rows / total)) for c in ISIC_COUNTS]
    counts[0] += rows - sum(counts)
    return make_feature_cache(path, num_classes=7, counts=counts, dim=dim, test_per_class=60,
                              noise=1.0, seed=0, name="isic-sized")


def main() -> None:
    """Time one configuration and the 64-configuration grid; print and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--head", default="linear")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="training precision: fp32|bf16|fp16")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat each timing, keep the fastest")
    ap.add_argument("--json", default="bench_grid.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = isic_sized_cache(tmp / "isic-sized.h5")
        base = train_head.TrainHeadConfig(cache=str(cache), head=args.head, epochs=args.epochs,
                                          seeds=seeds, device=args.device, val_fraction=0.2,
                                          precision=args.precision)
        one = grid.make_grid(base, [f"lr={LRS[0]}", f"weight_decay={WDS[0]}"], out=str(tmp / "one"))
        many = grid.make_grid(base, ["lr=" + ",".join(map(str, LRS)),
                                     "weight_decay=" + ",".join(map(str, WDS))],
                              out=str(tmp / "many"))
        assert len(many.configs) == 64

        def best_of(fn) -> float:  # noqa: ANN001
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        from dataclasses import replace

        alone_cfg = replace(one.configs[0], out=str(tmp / "alone"))
        t_alone = best_of(lambda: train_head.run(alone_cfg))
        t_one = best_of(lambda: grid.run(one))
        t_many = best_of(lambda: grid.run(many))
    figures = {
        "benchmark": "grid of 64 configurations vs one configuration",
        "head": args.head, "rows": 8400, "dim": 512, "classes": 7, "epochs": args.epochs,
        "batch_size": 128, "seeds": list(seeds), "val_fraction": 0.2, "device": args.device,
        "precision": args.precision,
        "grid": {"lr": list(LRS), "weight_decay": list(WDS)},
        "one_config_train_head_s": round(t_alone, 3),
        "one_config_grid_s": round(t_one, 3),
        "grid_64_s": round(t_many, 3),
        "ratio_vs_grid_one": round(t_many / t_one, 3),
        "ratio_vs_train_head": round(t_many / t_alone, 3),
        "goal_ratio": 4.0,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(f"one configuration: train-head {t_alone:.2f} s, grid of 1 {t_one:.2f} s")
    print(f"64 configurations: {t_many:.2f} s  →  {t_many / t_one:.2f}× the grid of 1, "
          f"{t_many / t_alone:.2f}× train-head (goal ≤ 4×)")
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
