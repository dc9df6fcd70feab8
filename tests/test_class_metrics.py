"""Per-class table, binary sensitivity/specificity and bootstrap intervals: equal to
scikit-learn and to hand counts, reproducible with the seed, and written into every run."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from featcache.class_metrics import _point, binary_rates, bootstrap_ci, per_class_table
from featcache.cli import main
from featcache.metrics import compute_metrics, softmax


def _data(n: int = 300, C: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    scores = rng.normal(size=(n, C)) + 1.5 * np.eye(C)[labels]  # informative, not perfect
    return labels, scores


def test_per_class_equals_sklearn() -> None:
    labels, scores = _data()
    labels[labels == 4] = 3  # class 4 absent from the labels (predicted now and then)
    table = per_class_table(labels, scores, ["a", "b", "c", "d", "e"])
    p, r, f, s = precision_recall_fscore_support(labels, scores.argmax(1), labels=range(5), zero_division=0)
    np.testing.assert_allclose(table["precision"].to_numpy(), p)
    np.testing.assert_allclose(table["recall"].to_numpy(), r)
    np.testing.assert_allclose(table["f1"].to_numpy(), f)
    assert table["support"].to_list() == s.tolist() and table["name"].to_list()[0] == "a"
    probs = softmax(scores)
    for c in range(4):
        assert table["auc"][c] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    assert np.isnan(table["auc"][4])  # no positive row: undefined
    # the mean of the per-class recall is the run's balanced accuracy
    m = compute_metrics(labels, scores, num_classes=5)
    assert table.filter(pl.col("support") > 0)["recall"].mean() == pytest.approx(m["balanced_acc"])


def test_per_class_multi_label_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 3)) < 0.3).astype(int)
    scores = rng.normal(size=(200, 3)) + 2 * labels - 1
    table = per_class_table(labels, scores)
    pred = scores > 0  # sigmoid > 0.5
    p, r, f, s = precision_recall_fscore_support(labels, pred, zero_division=0)
    np.testing.assert_allclose(table["f1"].to_numpy(), f)
    assert table["support"].to_list() == s.tolist()
    assert table["auc"][1] == pytest.approx(roc_auc_score(labels[:, 1], scores[:, 1]))


def test_sensitivity_specificity_by_hand() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    # confusion by hand: TP 3, FN 1, TN 4, FP 2
    rates = binary_rates(labels, pred)
    assert rates["sensitivity"] == pytest.approx(3 / 4) and rates["specificity"] == pytest.approx(4 / 6)


def test_bootstrap_contains_the_estimate_and_is_reproducible() -> None:
    evals = [_data(seed=s) for s in range(3)]
    a = bootstrap_ci(evals, 300, seed=7)
    b = bootstrap_ci(evals, 300, seed=7)
    c = bootstrap_ci(evals, 300, seed=8)
    assert a == b and a != c
    for key in ("acc", "balanced_acc", "macro_f1", "auc"):
        points = [compute_metrics(lab, sc)[key] for lab, sc in evals]
        lo, hi = a[f"{key}_ci"]
        assert lo <= np.mean(points) <= hi and hi - lo < 0.2
        for s, point in enumerate(points):
            lo_s, hi_s = a["per_seed"][s][f"{key}_ci"]
            assert lo_s <= point <= hi_s
            assert hi_s - lo_s > hi - lo  # one seed's rows are fewer than three seeds' mean
    with pytest.raises(ValueError):
        bootstrap_ci(evals, 0)


@pytest.fixture(scope="module")
def binary_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return make_feature_cache(tmp_path_factory.mktemp("cm") / "bin.h5", num_classes=2,
                              counts=[120, 60], dim=8, noise=0.8, seed=2)


def test_every_run_writes_per_class_rates_and_intervals(binary_cache, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    args = ["train-head", "--cache", str(binary_cache), "--epochs", "2", "--seeds", "0,1",
            "--device", "cpu", "--bootstrap", "200", "--bootstrap-seed", "3", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "metrics.json").read_text())
    preds = pl.read_parquet(out / "predictions.parquet")
    per_seed = pl.read_parquet(out / "per_class_seeds.parquet")
    for s, part in preds.group_by("seed"):
        labels, pred = part["label"].to_numpy(), part["pred"].to_numpy()
        entry = next(m for m in doc["per_seed"] if m["seed"] == s[0])
        assert entry["sensitivity"] == pytest.approx(binary_rates(labels, pred)["sensitivity"])
        assert entry["specificity"] == pytest.approx(binary_rates(labels, pred)["specificity"])
        rows = per_seed.filter(pl.col("seed") == s[0]).sort("class")
        _, r, _, _ = precision_recall_fscore_support(labels, pred, labels=[0, 1], zero_division=0)
        np.testing.assert_allclose(rows["recall"].to_numpy(), r)
    assert doc["sensitivity"] == pytest.approx(np.mean([m["sensitivity"] for m in doc["per_seed"]]))
    table = pl.read_csv(out / "per_class.csv")
    assert table.columns[:4] == ["class", "name", "support", "precision"] and "auc_std" in table.columns
    boot = doc["bootstrap"]
    assert boot["n"] == 200 and boot["seed"] == 3 and len(boot["per_seed"]) == 2
    for key in ("acc", "balanced_acc", "macro_f1", "auc"):
        lo, hi = boot[f"{key}_ci"]
        assert lo <= doc[key] <= hi
        assert all(f"{key}_ci" in entry for entry in boot["per_seed"])
    # the same command again: the same intervals
    again = CliRunner().invoke(main, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "metrics.json").read_text())["bootstrap"] == boot
    bad = CliRunner().invoke(main, ["train-head", "--cache", str(binary_cache), "--bootstrap", "-1"])
    assert bad.exit_code != 0 and "--bootstrap" in bad.output


def test_two_class_bootstrap_adds_sensitivity_and_specificity() -> None:
    evals = [_data(n=200, C=2, seed=s) for s in range(2)]
    boot = bootstrap_ci(evals, 300, seed=1)
    for key in ("sensitivity", "specificity", "auc"):
        points = [{**binary_rates(lab, sc.argmax(1)), **compute_metrics(lab, sc)}[key] for lab, sc in evals]
        lo, hi = boot[f"{key}_ci"]
        assert lo <= np.mean(points) <= hi < 1.0 and hi - lo < 0.3
        for s, point in enumerate(points):
            lo_s, hi_s = boot["per_seed"][s][f"{key}_ci"]
            assert lo_s <= point <= hi_s
    # adding them draws nothing more: the other intervals are those of the same rows without them
    three = [(lab, np.concatenate([sc, np.full((len(lab), 1), -9.0)], 1)) for lab, sc in evals]
    other = bootstrap_ci(three, 300, seed=1)  # three classes (the third never predicted)
    assert "sensitivity_ci" not in other and "sensitivity_ci" not in other["per_seed"][0]
    assert other["acc_ci"] == boot["acc_ci"]
    # one positive row in 20: the replicates that draw none leave sensitivity undefined and are
    # left out of its interval, which stays an interval of rates
    labels = np.zeros(20, dtype=int)
    labels[0] = 1
    scores = np.eye(2)[labels] * 2.0
    rare = bootstrap_ci([(labels, scores)], 200, seed=0)
    assert rare["sensitivity_ci"] == [1.0, 1.0] and rare["specificity_ci"] == [1.0, 1.0]
    assert rare["auc_ci"] == [1.0, 1.0]  # so is the AUC of class 1
    # no positive row at all: no replicate defines them, the intervals are NaN (null in JSON)
    none = bootstrap_ci([(np.zeros(20, dtype=int), np.eye(2)[np.zeros(20, dtype=int)] * 2.0)], 50, seed=0)
    assert np.isnan(none["auc_ci"]).all() and np.isnan(none["sensitivity_ci"]).all()
    assert none["acc_ci"] == [1.0, 1.0]


def _old_bootstrap(evals: list[tuple[np.ndarray, np.ndarray]], n: int, seed: int) -> dict:
    """The loop of ``bootstrap_ci`` before it computed AUC (argmax figures only), kept here
    to show that adding AUC changed no other interval."""
    rng = np.random.default_rng(seed)
    C = max(int(s.shape[1]) for _, s in evals)
    keys = ("acc", "balanced_acc", "macro_f1") + (("sensitivity", "specificity") if C == 2 else ())
    preds = [(np.asarray(lab), np.asarray(sc).argmax(1)) for lab, sc in evals]
    reps = np.empty((n, len(preds), len(keys)))
    for b in range(n):
        for s, (lab, pred) in enumerate(preds):
            idx = rng.integers(0, lab.size, lab.size)
            point = _point(lab[idx], pred[idx], C)
            if C == 2:
                point.update(binary_rates(lab[idx], pred[idx]))
            reps[b, s] = [point[k] for k in keys]

    lo, hi = 100 * (1 - 0.95) / 2, 100 * (1 + 0.95) / 2

    def interval(values: np.ndarray) -> list[float]:
        values = values[~np.isnan(values)]
        return [float(np.percentile(values, lo)), float(np.percentile(values, hi))]

    mean = reps.mean(1)
    return {**{f"{k}_ci": interval(mean[:, m]) for m, k in enumerate(keys)},
            "per_seed": [{f"{k}_ci": interval(reps[:, s, m]) for m, k in enumerate(keys)}
                         for s in range(len(preds))]}


@pytest.mark.parametrize("C", [2, 5])
def test_auc_leaves_every_other_interval_as_it_was(C: int) -> None:
    """The same draws in the same order: acc, balanced acc, macro F1 (and sensitivity,
    specificity) keep exactly the intervals they had before AUC was bootstrapped."""
    evals = [_data(n=150, C=C, seed=s) for s in range(2)]
    new, old = bootstrap_ci(evals, 120, seed=5), _old_bootstrap(evals, 120, seed=5)
    for key in [k for k in old if k.endswith("_ci")]:
        assert new[key] == old[key], key
        assert [p[key] for p in new["per_seed"]] == [p[key] for p in old["per_seed"]], key
    assert "auc_ci" in new and all("auc_ci" in p for p in new["per_seed"])


def _sklearn_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """The reference: scikit-learn's ``roc_auc_score`` of class 1 (two classes), else the
    mean over the classes with positive and negative rows of its one-vs-rest AUC; NaN
    where no class has both."""
    C = probs.shape[1]
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in ([1] if C == 2 else range(C))
            if 0 < (labels == c).sum() < labels.size]
    return float(np.mean(aucs)) if aucs else np.nan


@pytest.mark.parametrize(("C", "counts"), [(2, [22, 3]),
                                           pytest.param(4, [12, 9, 6, 1], marks=pytest.mark.slow)])
def test_auc_interval_equals_sklearn_over_the_same_resamples(C: int, counts: list[int]) -> None:
    """Replaying the rng: the AUC interval is the percentile interval of scikit-learn's AUC on
    each replicate's rows; a replicate with no positive (two classes) is left out, one that
    misses a rare class averages the others (compute_metrics' rule), as the point AUC does."""
    rng = np.random.default_rng(3)
    evals = []
    for _ in range(2):  # two seeds with few rows and a rare class: some replicates draw none of it
        labels = rng.permutation(np.repeat(np.arange(C), counts))
        scores = rng.normal(size=(labels.size, C)) + np.eye(C)[labels]
        scores[:, 0] = np.round(scores[:, 0])  # ties, counted one half
        evals.append((labels, scores))
    n, seed = 400, 11
    boot = bootstrap_ci(evals, n, seed=seed)
    replay = np.random.default_rng(seed)
    reps = np.empty((n, len(evals)))
    for b in range(n):
        for s, (lab, sc) in enumerate(evals):
            idx = replay.integers(0, lab.size, lab.size)  # bootstrap_ci's one draw per seed
            reps[b, s] = _sklearn_auc(lab[idx], softmax(sc)[idx])
    mean = reps.mean(1)
    if C == 2:  # three positives in 25 rows: some replicates have none
        assert np.isnan(reps).any()
    else:
        assert not np.isnan(reps).any()
    ref = mean[~np.isnan(mean)]
    assert boot["auc_ci"] == pytest.approx([np.percentile(ref, 2.5), np.percentile(ref, 97.5)], rel=1e-12)
    for s in range(len(evals)):
        ref_s = reps[~np.isnan(reps[:, s]), s]
        assert boot["per_seed"][s]["auc_ci"] == pytest.approx(
            [np.percentile(ref_s, 2.5), np.percentile(ref_s, 97.5)], rel=1e-12)


def test_multi_label_bootstrap_replays_compute_metrics_on_the_same_resamples() -> None:
    """Multi-label ``[N, C]`` labels get intervals too: each replicate is compute_metrics's
    multi-label figures of its resampled rows (replayed here with the same rng draws)."""
    rng = np.random.default_rng(5)
    labels = (rng.random((60, 3)) < 0.4).astype(np.int64)
    scores = rng.normal(size=(60, 3)) + 2.0 * (labels - 0.5)
    evals = [(labels, scores), (labels, scores + 0.3 * rng.normal(size=scores.shape))]
    got = bootstrap_ci(evals, 40, seed=9)
    replay = np.random.default_rng(9)
    reps = np.empty((40, 2, 4))
    for b in range(40):
        for s, (lab, sc) in enumerate(evals):
            idx = replay.integers(0, 60, 60)
            m = compute_metrics(lab[idx], sc[idx])
            reps[b, s] = [m["acc"], m["balanced_acc"], m["macro_f1"], m["auc"]]
    for j, key in enumerate(("acc", "balanced_acc", "macro_f1", "auc")):
        mean = reps[:, :, j].mean(1)
        assert got[f"{key}_ci"] == pytest.approx([np.percentile(mean, 2.5), np.percentile(mean, 97.5)])
        point = np.mean([compute_metrics(lab, sc)[key] for lab, sc in evals])
        assert got[f"{key}_ci"][0] <= point <= got[f"{key}_ci"][1]
    assert "sensitivity_ci" not in got and len(got["per_seed"]) == 2


def test_a_multi_label_run_writes_its_intervals(tmp_path) -> None:  # noqa: ANN001
    cache = make_feature_cache(tmp_path / "ml.h5", num_classes=3, counts=[60, 40, 30], dim=8,
                               multi_label=True, split_mode="official", seed=4)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--loss", "bce", "--epochs", "2",
                                    "--seeds", "0", "--device", "cpu", "--bootstrap", "30", "--out", str(out),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["bootstrap"]["n"] == 30 and doc["bootstrap"]["acc_ci"][0] <= doc["acc"] <= doc["bootstrap"]["acc_ci"][1]
