#!/usr/bin/env python3
"""Benchmark: the full TFA-LT protocol on an ISIC-sized random cache, featcache vs. the
straightforward PyTorch loop (DESIGN.md §6: ≥ 2× on 2 CPU cores, ≤ 5 s and ≤ 300 MB on one H100).

Protocol: 2 × 200 epochs of a 512×512 residual adapter with cosine logits (WRS and RUS
streams), then 100 epochs of a logit ensembler; batch 128, SGD momentum 0.9, wd 5e-4,
lr 0.1 cosine. Data: 8,400 training rows × 512, 7 classes with uniform random labels as in
the anchor (plus the 7 × 60 test rows of the tfa-lt protocol). One seed.

The straightforward loop is ``../shared/anchors/head_anchor.py`` when it exists (run as a
subprocess, same Python, same device), else the same loop re-implemented below.

    python benchmarks/bench_heads.py [--device cpu|cuda] [--precision fp32|bf16|fp16|fp32,bf16]
        [--rounds N] [--json out.json] [--skip-anchor]

``--precision`` is featcache's training precision (the anchor is always the plain fp32 loop);
a comma-separated list times each in turn, beside one anchor run. A ``+graphs`` suffix
(``bf16+graphs``) runs that precision with ``train_members(..., cuda_graphs=True)`` (CUDA
graphs on a GPU; on the CPU the same steps run eagerly): the pipeline has no setting for it
yet, so the benchmark passes it through ``featcache.heads.tfa_lt_stages.train_members``. The machine's load average
is recorded before and after each timing (on a shared machine it explains the spread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ROOT.parent / "shared" / "anchors" / "head_anchor.py"
N_TRAIN, DIM, CLASSES, TEST_PER_CLASS = 8400, 512, 7, 60


def make_cache(path: Path, noise: float = 1.0) -> Path:
    """An ISIC-sized random cache (uniform labels) written with featcache's own writer.

    Features are unit class means plus ``noise`` × N(0, 1) per dimension: at the default 1.0
    (the timing setting) classes barely separate in 512-d; ~0.06 gives a learnable task on
    which test accuracies (fp32 vs bf16) mean something.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_cache import make_feature_cache

    per_class = N_TRAIN // CLASSES + TEST_PER_CLASS
    return make_feature_cache(path, num_classes=CLASSES, counts=[per_class] * CLASSES, dim=DIM,
                              test_per_class=TEST_PER_CLASS, noise=noise, name="bench-isic")


def run_featcache(cache: Path, device: str, epochs: int, ensemble_epochs: int,
                  precision: str = "fp32", seeds: tuple[int, ...] = (0,)) -> dict:
    """Time featcache's TFA-LT pipeline (one seed, logit ensembler) end to end and training only."""
    import functools

    import featcache.heads.tfa_lt_stages as tfa_lt_module  # where TFA-LT's stages are trained
    from featcache.device import resolve_device
    from featcache.heads.training import train_members
    from featcache.pipelines.tfa_lt import TfaLtConfig, run

    dev = resolve_device(device)
    label = precision
    precision, graphs = (precision.removesuffix("+graphs"), precision.endswith("+graphs"))
    tfa_lt_module.train_members = functools.partial(train_members, cuda_graphs=graphs)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        torch.cuda.synchronize(dev)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run(TfaLtConfig(cache=str(cache), seeds=seeds, epochs=epochs,
                                 ensemble_epochs=ensemble_epochs, device=device, out=out,
                                 precision=precision,
                                 rus="fresh"))  # the anchor below draws RUS fresh each epoch
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
    tfa_lt_module.train_members = train_members
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    m = result.metrics
    return {"precision": label, "cuda_graphs": graphs, "wall_s": wall, "train_s": m["train_seconds"],
            "peak_gpu_mib": peak, "acc": m["acc"], "balanced_acc": m["balanced_acc"],
            "macro_f1": m["macro_f1"], "acc_std": m["acc_std"],
            "per_seed_acc": [r["acc"] for r in m["per_seed"]],
            "load_before": load_before, "load_after": os.getloadavg()}


def run_anchor(device: str, epochs: int, ensemble_epochs: int, anchor: Path = ANCHOR) -> dict:
    """Time the straightforward loop: the anchor file when present, else the same loop here."""
    load_before = os.getloadavg()
    if anchor.exists() and (epochs, ensemble_epochs) == (200, 100):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(anchor), device], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        m = re.search(r"([\d.]+) s", proc.stdout)
        peak = re.search(r"peak (\d+) MiB", proc.stdout)
        return {"source": str(anchor), "train_s": float(m.group(1)) if m else wall, "wall_s": wall,
                "peak_gpu_mib": float(peak.group(1)) if peak else None, "stdout": proc.stdout.strip(),
                "load_before": load_before, "load_after": os.getloadavg()}
    return {"source": "re-implemented loop", **_anchor_loop(device, epochs, ensemble_epochs),
            "load_before": load_before, "load_after": os.getloadavg()}


def _anchor_loop(dev: str, epochs: int, ensemble_epochs: int) -> dict:
    """The anchor's loop (nn.Linear adapter, torch.optim.SGD, CosineAnnealingLR)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    N, D, C = N_TRAIN, DIM, CLASSES
    X = torch.randn(N, D, device=dev)
    y = torch.randint(0, C, (N,), device=dev)
    T = F.normalize(torch.randn(C, D, device=dev), dim=-1)

    class Adapter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.A = torch.nn.Linear(D, D)
            self.lam = torch.nn.Parameter(torch.zeros(()))

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            g = torch.sigmoid(self.lam)
            return g * f + (1 - g) * self.A(f)

    def logits(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=-1) @ T.t() / 0.01

    def train(params, fwd, n_epochs, idx_fn) -> None:  # noqa: ANN001
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_epochs)
        for _ in range(n_epochs):
            idx = idx_fn()
            for i in range(0, len(idx), 128):
                b = idx[i : i + 128]
                loss = F.cross_entropy(fwd(b), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()

    t0 = time.perf_counter()
    w = torch.bincount(y, minlength=C).float().reciprocal()[y]
    a1, a2 = Adapter().to(dev), Adapter().to(dev)
    train(a1.parameters(), lambda b: logits(a1(X[b])), epochs, lambda: torch.multinomial(w, N, replacement=True))
    m = int(torch.bincount(y, minlength=C).min())

    def rus() -> torch.Tensor:
        return torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), device=dev)[:m]] for c in range(C)])

    train(a2.parameters(), lambda b: logits(a2(X[b])), epochs, lambda: rus()[torch.randperm(m * C, device=dev)])
    K = torch.nn.Linear(2 * C, C).to(dev)
    with torch.no_grad():
        L = torch.cat([logits(a1(X)), logits(a2(X))], 1)
    train(K.parameters(), lambda b: K(L[b]), ensemble_epochs, lambda: torch.randperm(N, device=dev))
    if dev == "cuda":
        torch.cuda.synchronize()
    return {"train_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - t0, "peak_gpu_mib": None}


def main() -> None:
    """Parse arguments, run both, print the figures (and write JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=200, help="stage I epochs (protocol: 200)")
    ap.add_argument("--ensemble-epochs", type=int, default=100, help="stage II epochs (protocol: 100)")
    ap.add_argument("--precision", default="fp32",
                    help="featcache's training precision: fp32|bf16|fp16, each optionally +graphs "
                         "(CUDA graphs), or a comma-separated list")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat everything this many times, interleaved (each round: every "
                         "precision, then the anchor); ratios are taken within a round")
    ap.add_argument("--seeds", default="0", help="featcache seeds (one batched run; the anchor has one)")
    ap.add_argument("--noise", type=float, default=1.0,
                    help="feature noise of the random cache (1.0: the timing setting; ~0.06: learnable)")
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--anchor-path", default=str(ANCHOR), help="head_anchor.py [%(default)s]")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    print(f"TFA-LT protocol ({args.epochs}+{args.epochs}+{args.ensemble_epochs} epochs, {N_TRAIN}x{DIM}, "
          f"{CLASSES} classes, batch 128) on {args.device}, {torch.get_num_threads()} threads", flush=True)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp) / "bench.h5", args.noise)
        seeds = tuple(int(x) for x in args.seeds.split(","))
        for r in range(args.rounds):
            runs = []
            for precision in precisions:
                rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                ours = run_featcache(cache, args.device, args.epochs, args.ensemble_epochs, precision,
                                     seeds)
                ours["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                ours["rss_before_mib"] = rss0 / 1024
                runs.append(ours)
                peak = f", peak GPU {ours['peak_gpu_mib']:.0f} MiB" if ours["peak_gpu_mib"] is not None else ""
                print(f"  [{r + 1}] featcache {precision}: train {ours['train_s']:.1f} s, end to end "
                      f"{ours['wall_s']:.1f} s (load, split, train, evaluate, write run){peak}; peak "
                      f"RSS {ours['peak_rss_mib']:.0f} MiB; test acc {100 * ours['acc']:.2f} ± "
                      f"{100 * ours['acc_std']:.2f} %, "
                      f"balanced {100 * ours['balanced_acc']:.2f} %; load {_load(ours)}", flush=True)
            anchor = None if args.skip_anchor else run_anchor(args.device, args.epochs, args.ensemble_epochs,
                                                               Path(args.anchor_path))
            if anchor:
                print(f"  [{r + 1}] straightforward (fp32): {anchor['train_s']:.1f} s  "
                      f"[{anchor['source']}]; load {_load(anchor)}", flush=True)
                for ours in runs:
                    ours["speedup_train"] = anchor["train_s"] / ours["train_s"]
                    ours["speedup_wall"] = anchor["train_s"] / ours["wall_s"]
                    print(f"  [{r + 1}] speed-up {ours['precision']}: {ours['speedup_train']:.2f}x "
                          f"(training), {ours['speedup_wall']:.2f}x (end to end)", flush=True)
            rounds.append({"featcache": runs, "straightforward": anchor})
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "protocol": {"rows": N_TRAIN, "dim": DIM, "classes": CLASSES, "epochs": args.epochs,
                     "ensemble_epochs": args.ensemble_epochs, "batch_size": 128,
                     "seeds": args.seeds, "noise": args.noise},
        "rounds": rounds,
    }
    if not args.skip_anchor:
        summary = {}
        for i, precision in enumerate(precisions):
            ratios = sorted(rd["featcache"][i]["speedup_train"] for rd in rounds)
            summary[precision] = {"speedup_train": ratios, "median": float(np.median(ratios))}
            if len(rounds) > 1:
                print(f"  speed-up {precision} over {len(rounds)} rounds: "
                      f"{', '.join(f'{x:.2f}x' for x in ratios)} (median {np.median(ratios):.2f}x)")
        report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)))
        print(f"Wrote {args.json}")


def _load(fig: dict) -> str:
    """``"1.02 -> 2.10"``: 1-minute load average before and after a timing."""
    return f"{fig['load_before'][0]:.2f} -> {fig['load_after'][0]:.2f}"


if __name__ == "__main__":
    main()
