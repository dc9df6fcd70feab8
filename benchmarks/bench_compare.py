#!/usr/bin/env python3
"""Benchmark: ``featcache compare`` vs. the straightforward per-paper scripts, on real HAM10000.

Data: the 10,015 real HAM10000 JPEGs in ``../shared/data/ham10000`` (``--ham``), encoded
once with the built-in random-weight ``tiny-clip`` model (32-d features; the accuracies say
nothing about the methods, the timings are what is measured) into a cache (``--cache`` reuses
one). Protocol: ``tfa-lt`` (60 test images per class, 9,595 training rows), seeds 0, 1,
full training data and 16 shots per class. ``×wall`` is plain seconds / featcache's wall
seconds, ``×train`` plain / featcache's training seconds.

Methods: zeroshot, knn, logreg, tip-adapter, clip-adapter, lp++, clap, linear, cosine,
tfa-lt, each

- through ``featcache compare`` (every seed of a method one batched run; the wall time of
  each method's run, loading its features, training, evaluating and writing its run folder,
  and the training time alone), and
- as the plain script a paper's repository publishes, written below: features as tensors,
  a Python loop over seeds, for SGD methods a loop over epochs and mini-batches of one
  ``nn.Module`` with ``torch.optim.SGD`` (the same epochs, batch size, learning rate and
  schedule as featcache's trainer, so both do the same work), k-NN in chunks of test rows
  (DINO's ``eval_knn.py``), Tip-Adapter's cache logits in one product (its ``main.py``),
  TFA-LT's two adapters one after the other and then the ensembler (its stage II always 100
  epochs, as ``compare`` runs it),
  ``logreg`` as scikit-learn fits in CLIP's binary search over C. Timed per method as the
  sum over seeds of training plus test logits (features already in memory: the plain side
  pays no loading or writing).

    python benchmarks/bench_compare.py [--cache ham-tiny.h5] [--epochs 200] [--json out.json]

The machine's load average is recorded before and after (on a shared machine it explains the
spread).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
HAM = ROOT.parent / "shared" / "data" / "ham10000"
METHODS = ("zeroshot", "knn", "logreg", "tip-adapter", "clip-adapter", "lp++", "clap", "linear",
           "cosine", "tfa-lt")


def build_cache(ham: Path, out: Path) -> Path:
    """Encode HAM10000 with tiny-clip through ``featcache extract`` (the CLI, one worker)."""
    cmd = [sys.executable, "-m", "featcache", "extract", "--dataset", "isic2018", "--root", str(ham),
           "--model", "tiny-clip", "--out", str(out), "--workers", "1"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)
    print(f"extracted {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------
# The plain scripts: one seed at a time, one module, one loop


def sgd_loop(params: list[torch.Tensor], loss_of, n: int, epochs: int, batch: int, lr: float,  # noqa: ANN001
             seed: int, order=None) -> None:  # noqa: ANN001
    """The loop every SGD script has: shuffle, mini-batches, SGD momentum 0.9, wd 5e-4,
    cosine schedule stepped per epoch."""
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        idx = order(gen) if order is not None else torch.randperm(n, generator=gen)
        for i in range(0, len(idx), batch):
            b = idx[i:i + batch]
            loss = loss_of(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()


def plain_zeroshot(x, y, xt, text, tau, seed, **_):  # noqa: ANN001, ANN003, ANN201
    return F.normalize(xt, dim=-1) @ text.T / tau


def plain_knn(x, y, xt, text, tau, seed, k=20, T=0.07, C=7, **_):  # noqa: ANN001, ANN003, ANN201
    """DINO eval_knn.py: cosine similarity to every training feature in chunks of test rows,
    top-k votes weighted exp(sim / T)."""
    train = F.normalize(x, dim=-1).T  # [D, n]
    out = []
    for i in range(0, xt.shape[0], 128):
        f = F.normalize(xt[i:i + 128], dim=-1)
        sim, idx = (f @ train).topk(min(k, train.shape[1]), dim=1)
        votes = torch.zeros(f.shape[0], C).scatter_add_(1, y[idx], (sim / T).exp())
        out.append(votes)
    return torch.cat(out)


def plain_logreg(x, y, xt, text, tau, seed, C=7, **_):  # noqa: ANN001, ANN003, ANN201
    """CLIP's linear probe: scikit-learn L-BFGS, C by CLIP's binary search on a 20 % split."""
    from sklearn.linear_model import LogisticRegression

    xn, yn = x.double().numpy(), y.numpy()
    rng = np.random.default_rng(seed)
    val = np.zeros(len(yn), dtype=bool)
    for c in np.unique(yn):
        rows = np.flatnonzero(yn == c)
        val[rng.permutation(rows)[:max(1, round(0.2 * rows.size))]] = True
    scores = {}

    def score(e: float) -> float:
        if e not in scores:
            clf = LogisticRegression(C=10.0 ** e, max_iter=1000).fit(xn[~val], yn[~val])
            scores[e] = float(np.mean([(clf.predict(xn[val][yn[val] == c]) == c).mean()
                                       for c in np.unique(yn[val])]))
        return scores[e]

    for e in (-6, -4, -2, 0, 2, 4, 6):
        score(float(e))
    best, step = max(scores, key=scores.get), 2.0
    while step > 1 / 8 + 1e-9:
        step /= 2
        for e in (best - step, best + step):
            if -6 <= e <= 6:
                score(e)
        best = max(scores, key=scores.get)
    clf = LogisticRegression(C=10.0 ** best, max_iter=1000).fit(xn, yn)
    return torch.as_tensor(clf.decision_function(xt.double().numpy()))


def plain_tip(x, y, xt, text, tau, seed, alpha=1.0, beta=5.5, C=7, **_):  # noqa: ANN001, ANN003, ANN201
    """Tip-Adapter main.py run_tip_adapter: zero-shot + α exp(−β(1 − f Kᵀ)) L."""
    keys, f = F.normalize(x, dim=-1), F.normalize(xt, dim=-1)
    cache = torch.exp(-beta * (1 - f @ keys.T)) @ F.one_hot(y, C).float()
    return f @ text.T / tau + alpha * cache


def plain_clip_adapter(x, y, xt, text, tau, seed, epochs=200, batch=128, lr=0.1, **_):  # noqa: ANN001, ANN003, ANN201
    D = x.shape[1]
    torch.manual_seed(seed)
    adapter = torch.nn.Sequential(torch.nn.Linear(D, D // 4, bias=False), torch.nn.ReLU(),
                                  torch.nn.Linear(D // 4, D, bias=False), torch.nn.ReLU())

    def logits(f: torch.Tensor) -> torch.Tensor:
        g = 0.2 * adapter(f) + 0.8 * f
        return F.normalize(g, dim=-1) @ text.T / tau

    sgd_loop(list(adapter.parameters()), lambda b: F.cross_entropy(logits(x[b]), y[b]), len(y),
             epochs, batch, lr, seed)
    with torch.no_grad():
        return logits(xt)


def plain_lp_pp(x, y, xt, text, tau, seed, epochs=200, batch=128, lr=0.1, C=7, **_):  # noqa: ANN001, ANN003, ANN201
    xn = F.normalize(x, dim=-1)
    onehot = F.one_hot(y, C).float()
    centroids = onehot.T @ xn / onehot.sum(0)[:, None]
    V = torch.nn.Parameter(centroids.clone())
    b = torch.nn.Parameter(torch.zeros(C))
    alpha = torch.nn.Parameter(torch.full((C,), 250.0 * float((centroids @ text.T).mean())))

    def logits(f: torch.Tensor) -> torch.Tensor:
        f = F.normalize(f, dim=-1)
        return f @ V.T + b + alpha * (f @ text.T)

    sgd_loop([V, b, alpha], lambda r: F.cross_entropy(logits(x[r]), y[r]), len(y), epochs, batch, lr, seed)
    with torch.no_grad():
        return logits(xt)


def plain_clap(x, y, xt, text, tau, seed, epochs=200, batch=128, lr=0.1, C=7, **_):  # noqa: ANN001, ANN003, ANN201
    """CLAP: W from the text classifier, CE + mean_c λ_c ‖w_c − t_c‖², λ_c the mean zero-shot
    probability of class c on its training rows."""
    with torch.no_grad():
        p = (F.normalize(x, dim=-1) @ text.T / tau).softmax(-1)
        lam = torch.stack([p[y == c, c].mean() for c in range(C)])
    W = torch.nn.Parameter(text.clone())

    def logits(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=-1) @ F.normalize(W, dim=-1).T / tau

    def loss(r: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits(x[r]), y[r]) + (lam * ((W - text) ** 2).sum(1)).mean()

    sgd_loop([W], loss, len(y), epochs, batch, lr, seed)
    with torch.no_grad():
        return logits(xt)


def plain_linear(x, y, xt, text, tau, seed, epochs=200, batch=128, lr=0.1, C=7, **_):  # noqa: ANN001, ANN003, ANN201
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], C)
    sgd_loop(list(lin.parameters()), lambda r: F.cross_entropy(lin(x[r]), y[r]), len(y), epochs,
             batch, lr, seed)
    with torch.no_grad():
        return lin(xt)


def plain_cosine(x, y, xt, text, tau, seed, epochs=200, batch=128, lr=0.1, C=7, sigma=25.0, **_):  # noqa: ANN001, ANN003, ANN201
    torch.manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(C, x.shape[1]) * 0.01)

    def logits(f: torch.Tensor) -> torch.Tensor:
        return sigma * F.normalize(f, dim=-1) @ F.normalize(W, dim=-1).T

    sgd_loop([W], lambda r: F.cross_entropy(logits(x[r]), y[r]), len(y), epochs, batch, lr, seed)
    with torch.no_grad():
        return logits(xt)


class _Adapter(torch.nn.Module):
    """TFA-LT's residual adapter (as ../shared/anchors/head_anchor.py)."""

    def __init__(self, D: int) -> None:
        super().__init__()
        self.A = torch.nn.Linear(D, D)
        self.lam = torch.nn.Parameter(torch.zeros(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.lam)
        return g * f + (1 - g) * self.A(f)


def plain_tfa_lt(x, y, xt, text, tau, seed, epochs=200, batch=128, lr=0.1, C=7, ens_epochs=100, **_):  # noqa: ANN001, ANN003, ANN201
    """TFA-LT: a WRS adapter and a RUS adapter (``epochs`` each), then a logit ensembler with
    focal loss (100 epochs, TFA-LT's stage II, as ``compare`` runs it) on the long-tailed set."""
    torch.manual_seed(seed)
    D, n = x.shape[1], len(y)

    def logits(a: _Adapter, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(a(f), dim=-1) @ text.T / tau

    w = torch.bincount(y, minlength=C).float().reciprocal()[y]
    a1, a2 = _Adapter(D), _Adapter(D)
    sgd_loop(list(a1.parameters()), lambda b: F.cross_entropy(logits(a1, x[b]), y[b]), n, epochs,
             batch, lr, seed, order=lambda g: torch.multinomial(w, n, replacement=True, generator=g))
    m = int(torch.bincount(y, minlength=C).min())
    gen = torch.Generator().manual_seed(seed + 1)
    rus = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=gen)[:m]]
                     for c in range(C)])
    sgd_loop(list(a2.parameters()), lambda b: F.cross_entropy(logits(a2, x[b]), y[b]), len(rus),
             epochs, batch, lr, seed, order=lambda g: rus[torch.randperm(len(rus), generator=g)])
    with torch.no_grad():
        z, zt = (torch.cat([logits(a1, v), logits(a2, v)], 1) for v in (x, xt))
    ens = torch.nn.Linear(2 * C, C)

    def focal(b: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(ens(z[b]), -1).gather(1, y[b, None])[:, 0]
        return (-(1 - logp.exp()) ** 2 * logp).mean()

    sgd_loop(list(ens.parameters()), focal, n, ens_epochs, batch, lr, seed)
    with torch.no_grad():
        return ens(zt)


PLAIN = {"zeroshot": plain_zeroshot, "knn": plain_knn, "logreg": plain_logreg, "tip-adapter": plain_tip,
         "clip-adapter": plain_clip_adapter, "lp++": plain_lp_pp, "clap": plain_clap,
         "linear": plain_linear, "cosine": plain_cosine, "tfa-lt": plain_tfa_lt}


def time_plain(cache_path: Path, seeds: tuple[int, ...], shots: int | None, epochs: int) -> dict:
    """Seconds (sum over seeds) and mean test accuracy of every plain script, on featcache's
    splits (drawn outside the timing)."""
    from featcache.cache import open_cache
    from featcache.heads.text import text_prototypes
    from featcache.splits import draw_shots, make_split

    cache = open_cache(str(cache_path))
    feats = cache.features("standard", "embed").float()
    labels = torch.as_tensor(cache.labels).long()
    text = F.normalize(text_prototypes(torch.as_tensor(cache.text_features), cache.templates, "auto",
                                       projection=cache.projection, kind="embed").float(), dim=-1)
    tau, C = cache.default_tau, cache.num_classes
    out = {}
    for name, fn in PLAIN.items():
        seconds, accs = 0.0, []
        for seed in seeds:
            split = make_split(cache.labels, cache.splits, cache.descriptor, None, seed)
            if shots is not None:
                split, _ = draw_shots(split, cache.labels, shots)
            tr, te = torch.as_tensor(split.train), torch.as_tensor(split.test)
            x, y, xt = feats[tr].contiguous(), labels[tr].contiguous(), feats[te].contiguous()
            t0 = time.perf_counter()
            logits = fn(x, y, xt, text, tau, seed, epochs=epochs, C=C)
            seconds += time.perf_counter() - t0
            accs.append(float((logits.argmax(1) == labels[te]).float().mean()))
        out[name] = {"seconds": seconds, "acc": float(np.mean(accs))}
        print(f"  plain {name:13s} {seconds:7.2f} s  acc {100 * out[name]['acc']:.2f}", file=sys.stderr)
    return out


def time_featcache(cache_path: Path, seeds: tuple[int, ...], shots: int | None, epochs: int,
                   out: Path) -> dict:
    """Wall and training seconds of every method through ``featcache compare``."""
    from featcache.pipelines import compare

    cfg = compare.CompareConfig(cache=str(cache_path), heads=METHODS, seeds=seeds, shots=(shots,),
                                epochs=epochs, device="cpu", out=str(out))
    res = compare.run(cfg, progress=lambda m: print("  " + m, file=sys.stderr), overwrite=True)
    return {r["head"]: {"seconds": r["seconds"], "train_seconds": r["train_seconds"], "acc": r["acc"],
                        "ece": r["ece"], "note": r["note"]}
            for r in res.table.iter_rows(named=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ham", default=str(HAM), help="HAM10000 folder [%(default)s]")
    ap.add_argument("--cache", default=None, help="an existing tiny-clip HAM10000 cache (else extracted)")
    ap.add_argument("--epochs", type=int, default=200, help="SGD epochs of every trained method [%(default)s]")
    ap.add_argument("--seeds", default="0,1", help="[%(default)s: the plain logreg search alone takes "
                                                   "minutes per seed on a loaded 2-core machine]")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads, both sides [%(default)s: on a shared 2-core machine more "
                         "threads than free cores make OpenBLAS spin, and scikit-learn's fits 50× slower]")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # numpy/scipy BLAS (scikit-learn's L-BFGS) and OpenMP
    seeds = tuple(int(s) for s in args.seeds.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    cache = Path(args.cache) if args.cache else build_cache(Path(args.ham), work / "ham-tiny.h5")
    load_before = os.getloadavg()
    results = {}
    for label, shots in (("full", None), ("16-shot", 16)):
        print(f"{label}: featcache compare", file=sys.stderr)
        fc = time_featcache(cache, seeds, shots, args.epochs, work / f"compare-{label}")
        print(f"{label}: plain scripts", file=sys.stderr)
        plain = time_plain(cache, seeds, shots, args.epochs)
        results[label] = {m: {"featcache": fc[m], "plain": plain[m]} for m in METHODS}
    load_after = os.getloadavg()
    print(f"\nHAM10000 (tiny-clip, 32-d), tfa-lt protocol, seeds {args.seeds}, {args.epochs} epochs; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':14s}" + "".join(f"| {lab:^44s}" for lab in results))
    print(f"{'method':14s}" + "| featcache wall  train  | plain   | ×wall  ×train " * len(results))
    for m in METHODS:
        cells = []
        for lab in results:
            f, p = results[lab][m]["featcache"], results[lab][m]["plain"]
            wall = f["seconds"] if f["seconds"] is not None else math.nan
            train = f["train_seconds"] if f["train_seconds"] is not None else math.nan
            ratio = p["seconds"] / train if train > 0 else math.inf
            cells.append(f"| {wall:8.2f} {train:7.2f}  | {p['seconds']:7.2f} | {p['seconds'] / wall:5.2f} {ratio:6.2f} ")
        print(f"{m:14s}" + "".join(cells))
    totals = {lab: (sum(results[lab][m]["featcache"]["seconds"] or 0 for m in METHODS),
                    sum(results[lab][m]["plain"]["seconds"] for m in METHODS)) for lab in results}
    for lab, (f, p) in totals.items():
        print(f"total {lab}: featcache {f:.1f} s, plain {p:.1f} s ({p / f:.2f}×)")
    doc = {"machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
           "torch": torch.__version__, "load_before": load_before, "load_after": load_after,
           "epochs": args.epochs, "seeds": list(seeds), "cache": str(cache), "results": results,
           "totals": {lab: {"featcache": f, "plain": p} for lab, (f, p) in totals.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
