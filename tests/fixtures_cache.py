"""Synthetic feature caches for tests: class-conditional Gaussian features written with
:func:`featcache.cache.write_cache`, so every reader path is exercised without a model.

Each class ``c`` has a mean direction ``μ_c`` (a random unit vector scaled by ``separation``)
and rows ``x = μ_c + noise·ε``. With ``learnable_few=True`` the rarest classes are as
separable as the frequent ones, so a method that corrects for imbalance (LA, TFA-LT) can
raise their accuracy clearly above CE, which overlapping classes push toward the head.
Text features are the class means plus a little noise, L2-normalised, under TFA-LT's
template and LIFT's; ``cls`` features are ``embed @ projection^T`` with a projection whose
columns are orthonormal, so ``cls @ projection`` gives back ``embed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.cache import CacheHeader, fingerprint_of, write_cache
from featcache.datasets.base import Descriptor

TEMPLATES = ("The category of this synthetic image is {}.", "a photo of a {}.")
TTE_VIEWS = ("tte_c", "tte_tl", "tte_tr", "tte_bl", "tte_br")


def make_feature_cache(
    path: str | Path,
    *,
    num_classes: int = 5,
    counts: list[int] | None = None,
    dim: int = 16,
    cls_dim: int | None = None,
    views: tuple[str, ...] = ("standard",),
    with_text: bool = True,
    split_mode: str = "none",
    seed: int = 0,
    learnable_few: bool = True,
    separation: float = 1.0,
    noise: float = 0.6,
    text_noise: float = 0.3,
    test_per_class: int | None = 10,
    groups: dict[str, list[str]] | None = None,
    multi_label: bool = False,
    model_tag: str = "synthetic-model",
    name: str = "synthetic",
) -> Path:
    """Write a complete synthetic cache to ``path`` and return the path.

    ``counts`` rows per class (default: an exponential profile from 200 down to 20);
    ``split_mode``: ``none`` (every source split ``''``: protocols draw their own) or
    ``official`` (per class 70 % train, 10 % val, 20 % test). ``model_tag`` feeds the model
    fingerprint (two caches with different tags do not match for ``predict``).
    """
    rng = np.random.default_rng(seed)
    C = num_classes
    if counts is None:
        counts = np.round(200 * (0.1 ** (np.arange(C) / max(C - 1, 1)))).astype(int).tolist()
    if len(counts) != C:
        raise ValueError(f"{len(counts)} counts for {C} classes")
    W = cls_dim or dim
    if dim > W:
        raise ValueError("cls_dim must be >= dim")
    means = rng.standard_normal((C, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    means *= separation
    if not learnable_few:  # rare classes collapse onto the first class: not learnable
        for c in range(C // 2, C):
            means[c] = means[0] + 0.05 * rng.standard_normal(dim)
    labels_1d = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    order = rng.permutation(len(labels_1d))
    labels_1d = labels_1d[order]
    N = len(labels_1d)
    base = means[labels_1d] + noise * rng.standard_normal((N, dim))
    proj = np.linalg.qr(rng.standard_normal((W, dim)))[0][:, :dim]  # [W, E], orthonormal columns
    feats = {}
    for v in views:
        jitter = 0.0 if v == "standard" else 0.1 * noise * rng.standard_normal((N, dim))
        emb = (base + jitter).astype(np.float32)
        feats[v] = {"embed": emb, "cls": (emb @ proj.T).astype(np.float32)}
    if split_mode == "none":
        splits = [""] * N
    elif split_mode == "official":
        splits = np.empty(N, dtype=object)
        for c in range(C):
            rows = np.flatnonzero(labels_1d == c)
            n_test, n_val = max(1, round(0.2 * len(rows))), round(0.1 * len(rows))
            splits[rows[:n_test]] = "test"
            splits[rows[n_test : n_test + n_val]] = "val"
            splits[rows[n_test + n_val :]] = "train"
        splits = splits.tolist()
    else:
        raise ValueError(f"split_mode must be 'none' or 'official', got {split_mode!r}")
    if multi_label:
        labels = (rng.random((N, C)) < 0.15).astype(np.uint8)
        labels[np.arange(N), labels_1d] = 1
    else:
        labels = labels_1d
    class_ids = tuple(f"c{c}" for c in range(C))
    descriptor = Descriptor(
        name=name,
        class_ids=class_ids,
        class_names=tuple(f"class {c}" for c in range(C)),
        data_type="synthetic",
        protocol=None if split_mode == "official" else "tfa-lt",
        test_per_class=test_per_class,
        groups={k: tuple(v) for k, v in (groups or {}).items()},
        multi_label=multi_label,
    )
    text = None
    if with_text:
        t = means[None] + text_noise * rng.standard_normal((len(TEMPLATES), C, dim))
        text = (t / np.linalg.norm(t, axis=-1, keepdims=True)).astype(np.float32)  # [T, C, E]
    model_fp = fingerprint_of({"model": model_tag, "dim": dim, "cls_dim": W})
    meta = {"model": model_tag, "synthetic": True, "seed": seed}
    header = CacheHeader(
        descriptor=descriptor,
        ids=[f"img{i:06d}" for i in range(N)],
        labels=labels,
        splits=splits,
        sources=[f"synthetic#{i}" for i in range(N)],
        meta=meta,
        fingerprint=fingerprint_of({**meta, "model_fp": model_fp, "n": N, "counts": list(counts)}),
        model_fingerprint=model_fp,
        views=list(views),
        projection=proj.astype(np.float32),
        logit_scale=100.0,
        templates=list(TEMPLATES) if with_text else [],
        text_features=text,
    )

    def blocks():  # noqa: ANN202
        step = 512
        for s in range(0, N, step):
            rows = np.arange(s, min(s + step, N))
            yield rows, {v: {k: a[rows] for k, a in kinds.items()} for v, kinds in feats.items()}

    return write_cache(Path(path), header, blocks())
