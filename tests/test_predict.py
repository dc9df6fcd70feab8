"""``featcache predict``: from a cache (the run's own held-out rows reproduce its metrics) and
from image files (the same logits as the run's own evaluation of those images' cached features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featcache.cache import open_cache
from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.pipelines import tfa_lt, train_head
from featcache.pipelines.extract import ExtractConfig
from featcache.pipelines.extract import run as extract
from featcache.pipelines.predict import predict_images, predict_run
from tests.fixtures_data import write_empty_file

CLASSES = {"akiec": 6, "bcc": 4, "mel": 3}


def noisy_folder(root: Path, per_split: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<k>.png``: noisy images of varied sizes (so resizing and
    cropping matter), each class brighter in one channel."""
    rng = np.random.default_rng(0)
    for split, counts in per_split.items():
        for c, (name, n) in enumerate(counts.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                arr = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
                arr[..., c % 3] += 120
                Image.fromarray(arr).save(root / split / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("predict")
    root = noisy_folder(tmp / "imgs", {"train": CLASSES, "test": {k: 2 for k in CLASSES}})
    cache = extract(ExtractConfig(dataset="folder", root=str(root), tte=True, out=str(tmp / "c.h5"),
                                  workers=0, progress=False, batch_size=8)).out
    common = dict(cache=str(cache), seeds=(0, 1), epochs=3, batch_size=8, device="cpu")
    linear = train_head.run(train_head.TrainHeadConfig(head="linear", tte=True, out=str(tmp / "lin"),
                                                       posthoc_tau=0.5, **common)).out_dir
    tfa = tfa_lt.run(tfa_lt.TfaLtConfig(ensemble="logit", ensemble_epochs=2, out=str(tmp / "tfa"),
                                        **common)).out_dir
    return {"tmp": tmp, "root": root, "cache": cache, "linear": linear, "tfa": tfa}


def _run_scores(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "predictions.parquet")


@pytest.mark.parametrize("kind", ["linear", "tfa"])
def test_predict_on_own_cache_reproduces_the_run(setup: dict, kind: str, tmp_path: Path) -> None:
    run_dir = setup[kind]
    res = predict_run(run_dir, str(setup["cache"]), out=tmp_path / "p", device="cpu")
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    for theirs, ours in zip(run_metrics["per_seed"], res.metrics["per_seed"], strict=True):
        for key in ("acc", "balanced_acc", "macro_f1", "auc", "many_acc", "medium_acc", "few_acc"):
            a, b = (np.nan if v is None else v for v in (theirs[key], ours[key]))  # JSON writes NaN as null
            assert a == b or (np.isnan(a) and np.isnan(b)), (key, a, b)
    table = res.table
    cache = open_cache(setup["cache"])
    test_rows = np.flatnonzero(cache.splits == "test")
    assert sorted(table["row"].to_list()) == test_rows.tolist()  # held-out rows only, one row each
    assert set(table["pred"].to_list()) <= set(CLASSES)
    probs = table.select([f"prob_{c}" for c in CLASSES]).to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert sorted(p.name for p in res.files) == sorted(p.name for p in tmp_path.joinpath("p").iterdir())


def test_predict_images_equals_the_runs_own_test_logits(setup: dict, tmp_path: Path) -> None:
    """Pixels -> backbone -> TTE crops -> head: the run's own evaluation of the cached features."""
    for kind in ("linear", "tfa"):
        run_dir = setup[kind]
        res = predict_images(run_dir, [str(setup["root"] / "test")], out=tmp_path / kind, device="cpu",
                             per_seed=True, progress=False, batch_size=3)
        cache = open_cache(setup["cache"])
        row_of = {str(Path(s).resolve()): r for r, s in enumerate(cache.sources)}
        rows = [row_of[str(Path(p).resolve())] for p in res.table["path"]]
        theirs = _run_scores(run_dir)
        for seed in (0, 1):
            ref = theirs.filter(pl.col("seed") == seed)
            ref_scores = dict(zip(ref["row"].to_list(), ref["scores"].to_list(), strict=True))
            expected = np.array([ref_scores[r] for r in rows])
            got = np.array([[res.table[f"prob_{c}_seed{seed}"][i] for c in CLASSES] for i in range(len(rows))])
            probs = np.exp(expected - expected.max(1, keepdims=True))
            np.testing.assert_allclose(got, probs / probs.sum(1, keepdims=True), atol=1e-5)
        mean = np.array(res.table["logits"].to_list())
        ref_mean = np.mean([[dict(zip(theirs.filter(pl.col("seed") == s)["row"].to_list(),
                                      theirs.filter(pl.col("seed") == s)["scores"].to_list(), strict=True))[r]
                             for r in rows] for s in (0, 1)], axis=0)
        np.testing.assert_allclose(mean, ref_mean, atol=1e-4)


def test_predict_images_skip_bad_names_the_file(setup: dict, tmp_path: Path) -> None:
    bad = write_empty_file(tmp_path / "broken.png")
    good = next((setup["root"] / "test" / "mel").iterdir())
    with pytest.raises(FeatcacheError, match="broken.png"):
        predict_images(setup["linear"], [str(good), str(bad)], out=tmp_path / "a", device="cpu", progress=False)
    csv = tmp_path / "list.csv"
    csv.write_text(f"path\n{good}\nbroken.png\n")
    res = predict_images(setup["linear"], [str(csv)], out=tmp_path / "b", device="cpu", skip_bad=True,
                         progress=False)
    assert res.table["path"].to_list() == [str(good)]
    assert [Path(s).name for s, _ in res.skipped] == ["broken.png"]
    assert (tmp_path / "b" / "skipped.csv").exists() and (tmp_path / "b" / "predictions.csv").exists()


def test_predict_images_refuses_other_weights(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="drop --pretrained"):
        predict_images(setup["linear"], [str(setup["root"] / "test")], out=tmp_path / "x", device="cpu",
                       pretrained="openai", progress=False)


def test_predict_images_refuses_a_file_that_is_not_the_recorded_one(tmp_path: Path) -> None:
    from featcache.images import backbone_for_cache

    other = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(1)}, other)
    meta = {"model": "tiny-clip", "pretrained": str(tmp_path / "gone.pt"), "weights_id": "sha256:" + "0" * 64,
            "preprocessing": {}}
    with pytest.raises(FeatcacheError, match="not there; pass --pretrained"):
        backbone_for_cache(meta)
    with pytest.raises(FeatcacheError):  # a file of other weights never builds silently
        backbone_for_cache(meta, pretrained=str(other))


def test_predict_cache_case_insensitive_classes_and_cli(setup: dict, tmp_path: Path) -> None:
    """The CLI names only files it wrote; class ids differing in case are the same classes."""
    from featcache.datasets.base import Descriptor, class_key

    assert class_key(" MEL ") == class_key("mel")
    assert Descriptor(name="x", class_ids=("mel", "nv"), class_names=("mel", "nv")).class_index("MEL") == 0
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["predict", "--run", str(setup["linear"]), "--cache", str(setup["cache"]),
                                  "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    named = r.output.split("Wrote ")[-1].strip().rstrip(".").split(", ")
    assert all(Path(p).exists() for p in named) and "splits.parquet" not in r.output
    assert "checkpoints" not in r.output


def test_predict_on_a_set_without_source_splits_uses_the_runs_rows_and_groups(tmp_path: Path) -> None:
    """tfa-lt protocol: every seed holds out other rows; descriptor groups (not count groups);
    a checkpoint from before groups were recorded is scored the same way; --split test is
    refused with a message naming the way out."""
    from tests.fixtures_cache import make_feature_cache

    cache = make_feature_cache(tmp_path / "lt.h5", num_classes=4, counts=[120, 40, 25, 22], dim=12,
                               test_per_class=8, groups={"many": ["c0", "c1"], "medium": ["c2"], "few": ["c3"]})  # not the count rule
    run_dir = train_head.run(train_head.TrainHeadConfig(cache=str(cache), head="linear", seeds=(0, 1, 2),
                                                        epochs=3, device="cpu", out=str(tmp_path / "r"))).out_dir
    run_metrics = json.loads((run_dir / "metrics.json").read_text())["per_seed"]
    assert run_metrics[0]["many_acc"] is not None
    for k in range(3):  # drop the recorded groups: predict redraws the run's split
        ck = torch.load(run_dir / "checkpoints" / f"seed-{k}.pt", weights_only=True)
        assert ck["groups"] == {"many": [0, 1], "medium": [2], "few": [3]}
        if k == 2:
            del ck["groups"]
            torch.save(ck, run_dir / "checkpoints" / f"seed-{k}.pt")
    res = predict_run(run_dir, str(cache), out=tmp_path / "p", device="cpu", per_seed=True)
    for theirs, ours in zip(run_metrics, res.metrics["per_seed"], strict=True):
        for key in ("acc", "macro_f1", "many_acc", "medium_acc", "few_acc"):
            assert theirs[key] == ours[key], (key, theirs[key], ours[key])
    splits = pl.read_parquet(run_dir / "splits.parquet").filter(pl.col("split") == "test")
    assert res.table.height == splits["row"].n_unique()  # one row per image, union over seeds
    assert res.table["seeds"].max() <= 3 and res.table["seeds"].min() >= 1
    seed0 = set(splits.filter(pl.col("seed") == 0)["row"].to_list())
    has0 = [r in seed0 for r in res.table["row"].to_list()]
    assert [p is not None for p in res.table["pred_seed0"].to_list()] == has0
    with pytest.raises(FeatcacheError, match="no rows in source split 'test'.*--split heldout"):
        predict_run(run_dir, str(cache), out=tmp_path / "q", device="cpu", split="test")


def test_calibrated_probabilities_use_the_runs_temperature(setup: dict, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(setup["linear"], run_dir)
    for path in (run_dir / "checkpoints").glob("seed-*.pt"):
        ck = torch.load(path, weights_only=True)
        ck["temperature"] = 2.0
        torch.save(ck, path)
    res = predict_run(run_dir, str(setup["cache"]), out=tmp_path / "p", device="cpu", per_seed=True)
    cal = res.table.select([f"calibrated_prob_{c}" for c in CLASSES]).to_numpy()
    plain = predict_run(setup["linear"], str(setup["cache"]), out=tmp_path / "q", device="cpu").table
    assert "calibrated_prob_mel" not in plain.columns
    logits = np.array([[res.table[f"prob_{c}_seed{s}"].to_numpy() for c in CLASSES] for s in (0, 1)])  # [S, C, N]
    z = np.log(logits) / 2.0  # log-softmax / T = logits / T up to a per-row constant
    want = np.exp(z - z.max(1, keepdims=True))
    want = (want / want.sum(1, keepdims=True)).mean(0).T
    np.testing.assert_allclose(cal, want, atol=1e-6)


def test_unfinished_finetune_runs_are_refused_clearly(tmp_path: Path) -> None:
    """LIFT runs predict from pixels (tests/test_lift_predict.py); one without metrics.json is refused."""
    run_dir = tmp_path / "ft"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"pipeline": "finetune", "trainable": {}, "train_counts": [1, 2]}, run_dir / "checkpoints" / "seed-0.pt")
    with pytest.raises(FeatcacheError, match="not a finished finetune run.*--resume"):
        predict_images(run_dir, [str(tmp_path)], out=tmp_path / "o", device="cpu")
