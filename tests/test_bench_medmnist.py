"""MedMNIST benchmark (DESIGN.md §3): timm backbones, the batched AdamW probe, MedMNIST
metrics, pad/scale geometry through extraction, per-class draws, the CLI and bad input.

Tiny models: ``tiny-clip`` (open_clip, 32 px, random) and timm's registered ``test_vit``
(160 px, 0.3 M parameters) with ``random`` weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from fixtures_data import write_medmnist
from sklearn.metrics import accuracy_score, roc_auc_score

from featcache.backbones import BackboneSpec
from featcache.cache import open_cache
from featcache.cli import main
from featcache.errors import DataError, FeatcacheError
from featcache.heads.base import HeadContext, build_head
from featcache.heads.training import predict_logits
from featcache.models import image_features, load_backbone
from featcache.pipelines.bench_medmnist import (
    BenchConfig,
    ProbeRecipe,
    medmnist_figures,
    per_class_subset,
    run,
    train_probes,
)
from featcache.pipelines.extract import ExtractConfig
from featcache.pipelines.extract import run as extract_run
from featcache.preprocess import Preprocessing

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TIMM_TINY = "timm:test_vit"


def _three_sets(root: Path) -> Path:
    """Multi-class RGB (retinamnist), binary grey (pneumoniamnist), multi-label (chestmnist)."""
    write_medmnist(root, "retinamnist", num_classes=5, sizes=(20, 10, 10), rgb=True, seed=1)
    write_medmnist(root, "pneumoniamnist", num_classes=2, sizes=(12, 6, 8), seed=2)
    write_medmnist(root, "chestmnist", num_classes=14, multi_label=True, sizes=(12, 6, 8), seed=3)
    return root


# --- metrics --------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_acc_auc_agree_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    # multi-class: ACC argmax, AUC macro one-vs-rest on softmax probabilities
    y = rng.integers(0, 5, 200)
    s = rng.normal(size=(200, 5)) + np.eye(5)[y]
    p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    got = medmnist_figures(y, s)
    assert got["acc"] == pytest.approx(accuracy_score(y, s.argmax(1)))
    assert got["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    # binary: ACC at threshold 0.5 on P(class 1), AUC of class 1
    y = rng.integers(0, 2, 150)
    s = rng.normal(size=(150, 2)) + np.eye(2)[y]
    p1 = np.exp(s[:, 1]) / np.exp(s).sum(1)
    got = medmnist_figures(y, s)
    assert got["acc"] == pytest.approx(accuracy_score(y, p1 > 0.5))
    assert got["auc"] == pytest.approx(roc_auc_score(y, p1))
    # multi-label: ACC at 0.5 per label, AUC mean over labels
    y = (rng.random((120, 14)) < 0.3).astype(np.int64)
    s = rng.normal(size=(120, 14)) + y
    got = medmnist_figures(y, s)
    prob = _sigmoid(s)
    assert got["acc"] == pytest.approx(np.mean([accuracy_score(y[:, c], prob[:, c] > 0.5) for c in range(14)]))
    assert got["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, c], prob[:, c]) for c in range(14)]))
    assert all(math.isnan(got[k]) for k in ("many_acc", "medium_acc", "few_acc"))


# --- the probes (members of the one trainer) equal torch.optim.AdamW + StepLR + DataLoader ----


def _reference_probe(head0, g: int, feats, labels, pool, lr: float, recipe: ProbeRecipe, multi: bool):  # noqa: ANN001, ANN202
    """Member ``g`` trained alone by torch itself: nn.Linear from the member's initial values,
    AdamW + StepLR stepped per iteration, and each epoch one ``torch.randperm`` of the pool
    from the member's sample generator, cut by torch's ``BatchSampler(drop_last=True)`` (FMMIC's
    loader). (A ``RandomSampler`` with that generator draws a second, discarded permutation at
    the end of each epoch, torch/utils/data/sampler.py, so its later epochs differ.)"""
    spec = head0.members[g]
    lin = torch.nn.Linear(feats.shape[1], labels.shape[1] if multi else head0.num_classes)
    with torch.no_grad():
        lin.weight.copy_(head0.weight[g])
        lin.bias.copy_(head0.bias[g])
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.decay_every, gamma=recipe.lr_decay)
    rows, gen = torch.as_tensor(pool), spec.generator("sample")
    step = 0
    while step < recipe.iterations:
        perm = torch.randperm(len(rows), generator=gen).tolist()
        for batch in torch.utils.data.BatchSampler(perm, spec.batch_size, drop_last=True):
            batch = rows[batch]
            out = lin(feats[batch])
            y = labels[batch]
            loss = F.binary_cross_entropy_with_logits(out, y) if multi else F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == recipe.iterations:
                break
    return lin


@pytest.mark.parametrize("multi", [False, True])
def test_probes_equal_torch_adamw_steplr_dataloader(multi: bool) -> None:
    g = torch.Generator().manual_seed(0)
    N, D, C = 60, 12, 4
    feats = torch.randn(N, D, generator=g)
    labels = (torch.rand(N, C, generator=g) < 0.4).float() if multi else torch.randint(0, C, (N,), generator=g)
    # pool sizes 40, 50 and 7: epochs of 2, 3 and 1 whole batches (40 // 16, 50 // 16, the
    # last pool smaller than a batch: b = 7), so the run crosses epoch ends at different steps
    pools = [np.arange(0, 40), np.arange(10, 60), np.arange(0, 7)]
    lrs, seeds = [1e-2, 3e-3, 1e-2], [0, 1, 2]
    recipe = ProbeRecipe(iterations=12, batch_size=16, weight_decay=0.05, lr_decay=0.5, decay_every=4)
    head = train_probes(feats, labels, pools, lrs, seeds, recipe, C)
    assert [m.batch_size for m in head.members] == [16, 16, 7]
    assert {m.optimizer for m in head.members} == {"adamw"} and all(m.drop_last for m in head.members)
    start = build_head("linear", HeadContext(D, C), head.members)  # the members' initial values
    for k in range(3):
        lin = _reference_probe(start, k, feats, labels, pools[k], lrs[k], recipe, multi)
        torch.testing.assert_close(head.weight[k].detach(), lin.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.bias[k].detach(), lin.bias.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(head.weight[0], start.weight[0])  # it trained
    assert predict_logits(head, feats).shape == (3, N, C)


def test_a_probe_trained_with_others_equals_it_alone() -> None:
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    pools = [np.arange(50), np.arange(0, 30), np.arange(50)]
    recipe = ProbeRecipe(iterations=9, batch_size=8)
    together = train_probes(feats, labels, pools, [1e-2, 1e-2, 3e-3], [0, 1, 0], recipe, 3)
    for k in range(3):
        alone = train_probes(feats, labels, [pools[k]], [[1e-2, 1e-2, 3e-3][k]], [[0, 1, 0][k]], recipe, 3)
        torch.testing.assert_close(together.weight[k], alone.weight[0], rtol=1e-6, atol=1e-7)


# --- per-class draws ------------------------------------------------------------------


def test_per_class_subsets_have_requested_sizes_and_change_with_seed() -> None:
    labels = np.repeat(np.arange(4), [30, 12, 3, 20])  # class 2 has fewer than N
    train = np.arange(0, 65, dtype=np.int64)[::1]
    train = train[train % 5 != 0]  # a train split that is not every row
    a = per_class_subset(labels, train, 5, seed=0)
    counts = np.bincount(labels[a], minlength=4)
    assert counts.tolist() == [5, 5, min(5, int((labels[train] == 2).sum())), 5]
    assert set(a.tolist()) <= set(train.tolist())
    assert np.array_equal(a, per_class_subset(labels, train, 5, seed=0))  # seeded
    assert not np.array_equal(a, per_class_subset(labels, train, 5, seed=1))  # fresh per seed
    # multi-label: at least min(N, positives) positives per label, plus N rows with none
    ml = (np.random.default_rng(0).random((80, 3)) < 0.3).astype(np.int64)
    rows = per_class_subset(ml, np.arange(80), 4, seed=0)
    assert all(ml[rows, c].sum() >= min(4, ml[:, c].sum()) for c in range(3))
    assert (ml[rows].sum(1) == 0).sum() >= 4


# --- pad and scale through the real extraction -------------------------------------------


@pytest.mark.parametrize("model", ["tiny-clip", TIMM_TINY])
def test_pad_and_scale_geometry_through_extraction(tmp_path: Path, model: str) -> None:
    path, arrays = write_medmnist(tmp_path / "d", "bloodmnist", num_classes=8, sizes=(8, 2, 2), rgb=True)
    imgs = np.load(path)["train_images"].copy()
    imgs[0] = 77  # a constant image: scaling keeps it constant, padding frames it in black
    np.savez(path, **{**dict(np.load(path)), "train_images": imgs})
    backbone = load_backbone(model, "random")
    S = backbone.image_size
    feats = {}
    for mode in ("scale", "pad"):
        out = extract_run(ExtractConfig(
            dataset="medmnist", root=str(path.parent), dataset_options={"subset": "bloodmnist", "size": 28},
            model=model, pretrained="random", resize=mode, out=str(tmp_path / f"{mode}.h5"), progress=False,
        )).out
        cache = open_cache(out)
        assert cache.meta["preprocessing"]["resize"] == mode and cache.meta["preprocessing"]["size"] == S
        feats[mode] = cache.features("standard", "embed")
    prep = Preprocessing.from_open_clip(backbone.preprocess)
    off = (S - 28) // 2
    pad = np.zeros((2, S, S, 3), dtype=np.uint8)  # black canvas, image centred
    pad[:, off : off + 28, off : off + 28] = imgs[:2]
    scale = np.full((1, S, S, 3), 77, dtype=np.uint8)  # the constant image fills the frame
    with torch.no_grad():
        def enc(x: np.ndarray) -> torch.Tensor:
            t = prep.normalize(torch.from_numpy(x).permute(0, 3, 1, 2), torch.float32)
            return image_features(backbone.visual, t)[0]

        torch.testing.assert_close(feats["pad"][:2], enc(pad), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(feats["scale"][:1], enc(scale), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(feats["pad"][0], feats["scale"][0], atol=1e-3)


# --- timm backbones -------------------------------------------------------------------


def test_timm_backbone_from_file_and_clear_weight_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    torch.manual_seed(5)
    full = timm.create_model("test_vit", pretrained=False)  # with its 1000-class head
    ckpt = tmp_path / "test_vit.pth"
    torch.save(full.state_dict(), ckpt)
    backbone = load_backbone(TIMM_TINY, str(ckpt))
    assert backbone.weights_id.startswith("sha256:") and not backbone.has_text
    assert backbone.logit_scale is None and backbone.embed_dim == full.num_features
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = full.forward_head(full.forward_features(x), pre_logits=True)
        emb, cls = image_features(backbone.visual, x)
    torch.testing.assert_close(emb, want)
    torch.testing.assert_close(cls, want)
    torch.testing.assert_close(backbone.projection(), torch.eye(full.num_features))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FeatcacheError, match="--pretrained /path/to/model.safetensors"):
        load_backbone("timm:test_vit.r160_in1k")
    with pytest.raises(FeatcacheError, match="no pretrained tag 'r16_in1k'. Did you mean 'r160_in1k'"):
        load_backbone(TIMM_TINY, "r16_in1k")
    with pytest.raises(FeatcacheError, match="does not exist"):
        load_backbone(TIMM_TINY, str(tmp_path / "missing.pth"))


# --- the benchmark end to end through the CLI ------------------------------------------


@pytest.mark.slow
def test_cli_end_to_end_writes_contract_files_and_reuses_caches(tmp_path: Path) -> None:
    root = _three_sets(tmp_path / "data")
    out, caches = tmp_path / "run", tmp_path / "caches"
    args = [
        "bench", "medmnist", "--root", str(root), "--datasets", "retinamnist,pneumoniamnist,chestmnist",
        "--backbones", f"tiny-clip,{TIMM_TINY}:random", "--sizes", "28", "--resize", "scale",
        "--seeds", "0,1", "--per-class", "2", "--iterations", "30", "--lrs", "1e-3,1e-2",
        "--out", str(out), "--cache-dir", str(caches), "--device", "cpu", "--no-progress",
        "--input-size", "model", "--interpolation", "model", "--feature", "embed",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"to {out}" in res.output and "| backbone | method |" in res.output
    assert "recipe paper (FMMIC's code): 30 iterations, batch 64" in res.output
    assert "(overridden: iterations, lrs)" in res.output
    for name in ("config.json", "metrics.json", "metrics.parquet", "metrics.csv", "table.md",
                 "table.parquet", "table.csv", "summary.parquet", "size_resize.png", "data_efficiency.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("acc", "balanced_acc", "macro_f1", "auc", "many_acc", "medium_acc", "few_acc"):
        assert key in doc and f"{key}_std" in doc
    assert doc["many_acc"] is None and 0 <= doc["acc"] <= 1 and 0 <= doc["auc"] <= 1
    assert [s["seed"] for s in doc["per_seed"]] == [0, 1]
    assert len(doc["cells"]) == 3 * 2 * 2  # data sets × backbones × (full, per-class 2)

    metrics = pl.read_parquet(out / "metrics.parquet")
    # every (dataset, backbone, training set, lr, seed) once; one lr selected per cell
    assert len(metrics) == 3 * 2 * 2 * 2 * 2
    sel = metrics.filter(pl.col("selected"))
    assert len(sel) == 3 * 2 * 2 * 2
    assert sel.group_by(["dataset", "backbone", "per_class"]).agg(pl.col("lr").n_unique())["lr"].max() == 1
    retina = metrics.filter((pl.col("dataset") == "retinamnist") & pl.col("per_class").is_null())
    assert retina["n_train"].unique().to_list() == [20]
    few = metrics.filter((pl.col("dataset") == "retinamnist") & (pl.col("per_class") == 2))
    assert few["n_train"].unique().to_list() == [10]  # 2 per class × 5 classes
    table = pl.read_parquet(out / "table.parquet")
    assert table["backbone"].to_list() == ["tiny-clip", f"{TIMM_TINY}:random"]
    assert {"retinamnist_acc", "chestmnist_auc_std"} <= set(table.columns)
    config = json.loads((out / "config.json").read_text())
    assert config["iterations"] == 30 and len(config["caches"]) == 6
    assert config["recipe"] == "paper" and config["recipe_overrides"] == ["iterations", "lrs"]

    mtimes = {p: p.stat().st_mtime_ns for p in caches.glob("*.h5")}
    assert len(mtimes) == 6
    # run again (one data set and backbone, to stay quick): the cache is reused, not rewritten,
    # and the seeded run gives the same figures
    args[args.index("--out") + 1] = str(tmp_path / "run2")
    args[args.index("--datasets") + 1] = "pneumoniamnist"
    args[args.index("--backbones") + 1] = "tiny-clip"
    args += ["--plot-format", "png,svg"]  # figures in every format asked for (featcache.plots)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "run2" / "size_resize.svg").is_file() and (tmp_path / "run2" / "size_resize.png").is_file()
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["plot_format"] == "png,svg"
    assert {p: p.stat().st_mtime_ns for p in caches.glob("*.h5")} == mtimes
    key = ["per_class", "lr", "seed"]
    first = metrics.filter((pl.col("dataset") == "pneumoniamnist") & (pl.col("backbone") == "tiny-clip"))
    second = pl.read_parquet(tmp_path / "run2" / "metrics.parquet")
    assert len(second) == len(first) == 8
    assert first.sort(key, nulls_last=True)["acc"].to_list() == second.sort(key, nulls_last=True)["acc"].to_list()


def test_finetune_with_frozen_encoder_equals_linear_probe(tmp_path: Path) -> None:
    """encoder lr 0: end-to-end fine-tuning trains only the head, on the same features, batches
    and initial values as the probe, so both give the same predictions."""
    root = tmp_path / "data"
    write_medmnist(root, "pneumoniamnist", num_classes=2, sizes=(16, 6, 10), seed=4)
    res = run(BenchConfig(
        datasets=("pneumoniamnist",), root=str(root), backbones=("tiny-clip",), seeds=(0,),
        methods=("linear", "finetune"), iterations=15, lrs=(1e-2,), finetune_head_lr=1e-2,
        encoder_lrs=(0.0,), batch_size=8, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "c"),
        device="cpu", progress=False, input_size="model",
    ))
    m = res.metrics.sort("method")
    assert m["method"].to_list() == ["finetune", "linear"]
    assert m["acc"][0] == m["acc"][1] and m["val_acc"][0] == m["val_acc"][1]
    assert m["auc"][0] == pytest.approx(m["auc"][1], abs=1e-6)


# --- bad input ------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_medmnist(root, "pneumoniamnist")
    base = ["bench", "medmnist", "--root", str(root), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumonimnist"])
    assert res.exit_code == 2 and "Did you mean 'pneumoniamnist'" in res.output
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumoniamnist,breastmnist"])
    assert res.exit_code == 2 and str(root / "breastmnist.npz") in res.output and "--download" in res.output
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumoniamnist", "--sizes", "64"])
    assert res.exit_code == 2 and "pneumoniamnist_64.npz" in res.output
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumoniamnist", "--backbones", "ViT-B-61:openai"])
    assert res.exit_code == 2 and "Did you mean 'ViT-B-16'" in res.output
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumoniamnist", "--backbones", "timm:resnet181"])
    assert res.exit_code == 2 and "Unknown timm model 'resnet181'" in res.output
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumoniamnist", "--methods", "linaer"])
    assert res.exit_code == 2 and "Did you mean 'linear'" in res.output
    res = CliRunner().invoke(main, [*base, "--datasets", "pneumoniamnist", "--sizes", "2x"])
    assert res.exit_code == 2 and "--sizes expects" in res.output
    assert not (tmp_path / "o").exists()  # nothing started
    with pytest.raises(DataError, match="could not be read"):
        (root / "bad").mkdir()
        (root / "bad" / "pneumoniamnist.npz").write_bytes(b"not a zip")
        run(BenchConfig(datasets=("pneumoniamnist",), root=str(root / "bad"), seeds=(0,), iterations=1,
                        out=str(tmp_path / "o2"), cache_dir=str(tmp_path / "c2"), progress=False))
    assert BackboneSpec.parse("timm:resnet18.a1_in1k:/w/x.pth").pretrained == "/w/x.pth"


# --- real data (opt-in) ----------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "medmnist").is_dir(), reason=f"{SHARED / 'medmnist'} is absent")
def test_shared_medmnist_bench(tmp_path: Path) -> None:
    res = run(BenchConfig(
        datasets=("breastmnist", "pneumoniamnist"), root=str(SHARED / "medmnist"),
        backbones=("tiny-clip",), seeds=(0,), per_class=(10,), iterations=100, input_size="model",
        out=str(tmp_path / "run"), cache_dir=str(tmp_path / "c"), device="cpu", progress=False,
    ))
    full = res.summary.filter(pl.col("per_class").is_null()).sort("dataset")
    assert full["dataset"].to_list() == ["breastmnist", "pneumoniamnist"]
    assert full["n_train"].to_list() == [546.0, 4708.0]
    few = res.summary.filter(pl.col("per_class") == 10)
    assert few["n_train"].to_list() == [20.0, 20.0]
    assert all(0 <= v <= 1 for v in full["auc"].to_list())


# --- issue 11: descriptors, checks, recipe, selection ----------------------------------


def test_descriptors_carry_official_info_and_files_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Task, channels and split sizes as medmnist 3.0.2's INFO; a file whose channels or label
    width disagree is refused, one whose split sizes disagree is loaded with a warning."""
    from featcache.datasets import build_manifest
    from featcache.datasets.medmnist import SUBSETS, medmnist_info

    info = {s: medmnist_info(s) for s in SUBSETS}
    assert info["pneumoniamnist"] == {"task": "binary-class", "n_channels": 1,
                                      "n_samples": {"train": 4708, "val": 524, "test": 624}}
    assert info["chestmnist"]["task"] == "multi-label, binary-class"
    assert info["retinamnist"]["task"] == "ordinal-regression" and info["retinamnist"]["n_channels"] == 3
    assert info["pathmnist"]["n_samples"] == {"train": 89996, "val": 10004, "test": 7180}
    write_medmnist(tmp_path / "grey", "bloodmnist", num_classes=8, sizes=(8, 2, 2))
    with pytest.raises(DataError, match=r"1 channel\(s\), but official bloodmnist has 3"):
        build_manifest("medmnist", tmp_path / "grey", subset="bloodmnist")
    write_medmnist(tmp_path / "rgb", "pneumoniamnist", rgb=True)
    with caplog.at_level("WARNING"):
        build_manifest("medmnist", tmp_path / "rgb", subset="pneumoniamnist")
    assert "images have 3 channels, but official pneumoniamnist is grey" in caplog.text
    write_medmnist(tmp_path / "ml", "pneumoniamnist", num_classes=2, multi_label=True)
    with pytest.raises(DataError, match=r"labels have shape \(6, 2\); expected \[N\] or \[N, 1\]"):
        build_manifest("medmnist", tmp_path / "ml", subset="pneumoniamnist")
    write_medmnist(tmp_path / "ok", "pneumoniamnist")
    with caplog.at_level("WARNING"):
        build_manifest("medmnist", tmp_path / "ok", subset="pneumoniamnist")
    assert "6 rows, but official pneumoniamnist has 4708 in its train split" in caplog.text


def _quick(tmp_path: Path, **kw: object) -> BenchConfig:
    """A tiny run: pneumoniamnist-shaped data, tiny-clip at its own 32 px."""
    root = tmp_path / "data"
    if not root.exists():
        write_medmnist(root, "pneumoniamnist", num_classes=2, sizes=(20, 8, 10), seed=7)
    args = dict(datasets=("pneumoniamnist",), root=str(root), backbones=("tiny-clip",), seeds=(0,),
                input_size="model", out=str(tmp_path / "run"), cache_dir=str(tmp_path / "c"),
                device="cpu", progress=False)
    args.update(kw)
    return BenchConfig(**args)


def test_recipe_paper_is_fmmic_by_default_and_fast_is_named() -> None:
    """FMMIC Common_Main.py: 15000 iterations (l. 259), batch 64 (l. 291), lr 1e-3 (l. 249)."""
    paper = BenchConfig(datasets=("pneumoniamnist",))
    assert (paper.recipe, paper.iterations, paper.batch_size, paper.lrs, paper.val_checks) == (
        "paper", 15000, 64, (1e-3,), 10)
    assert (paper.lr_decay, paper.decay_every, paper.weight_decay) == (0.9, 200, 0.01)
    assert paper.describe_recipe().startswith("recipe paper (FMMIC's code): 15000 iterations, batch 64")
    fast = BenchConfig(datasets=("pneumoniamnist",), recipe="fast")
    assert (fast.iterations, fast.batch_size, fast.lrs) == (1000, 128, (1e-4, 1e-3, 1e-2))
    assert "not the paper's recipe" in fast.describe_recipe()
    over = BenchConfig(datasets=("pneumoniamnist",), iterations=30)
    assert over.recipe_overrides == ("iterations",) and "(overridden: iterations)" in over.describe_recipe()
    dino = BackboneSpec("timm:vit_small_patch14_dinov2", "timm:vit_small_patch14_dinov2", "random")
    assert paper.finetune_batch_for(dino) == 32 and paper.input_for(dino) == (518, "bilinear")
    assert paper.finetune_batch_for(BackboneSpec.parse("tiny-clip")) == 64
    with pytest.raises(FeatcacheError, match="Unknown --recipe 'papr'"):
        BenchConfig(datasets=("pneumoniamnist",), recipe="papr")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## MedMNIST benchmark", 1)[1].split("\n## ", 1)[0]
    assert "--recipe paper" in section and "--recipe fast" in section
    assert "with the\npaper's recipe" not in section and "with the paper's recipe" not in section


def test_check_iterations_follow_fmmic_rule() -> None:
    """Common_Trainer.py l. 255-259: epochs e with e % (E // min(10, E)) == 0 or e == E - 1."""
    from featcache.pipelines.bench_medmnist import check_iterations

    # 640 rows, batch 64: 10 batches per epoch, E = 1500, every 150 epochs
    its = check_iterations(640, 64, 15000, 10)
    assert its == [(e + 1) * 10 for e in range(0, 1500, 150)] + [15000]
    # TissueMNIST-sized: 2585 batches per epoch, E = 5: every epoch, then the final iteration
    assert check_iterations(165466, 64, 15000, 10) == [2585, 5170, 7755, 10340, 12925, 15000]
    assert check_iterations(20, 64, 7, 10) == [1, 2, 3, 4, 5, 6, 7]  # pool smaller than a batch
    assert check_iterations(640, 64, 15000, 0) == [15000]


def test_probe_reports_best_val_acc_checkpoint(tmp_path: Path) -> None:
    """The reported figures are those of the checkpoint with the best val ACC (first on ties),
    not of the final weights: retraining each member to every check iteration agrees."""
    from featcache.pipelines.bench_medmnist import check_iterations, val_acc

    cfg = _quick(tmp_path, iterations=60, batch_size=4, lrs=(1e-1, 1e-2), seeds=(0, 1))
    res = run(cfg)
    cache = open_cache(res.caches[0])
    feats = cache.features("standard", "cls")
    labels = torch.from_numpy(cache.labels).long()
    train, val = cache.split_indices("train"), cache.split_indices("val")
    checks = check_iterations(len(train), 4, 60, 10)
    assert checks == list(range(5, 61, 5))
    found_earlier = False
    for r in res.metrics.to_dicts():
        accs = []
        for t in checks:
            head = train_probes(feats, labels, [train], [r["lr"]], [r["seed"]],
                                ProbeRecipe(iterations=t, batch_size=4), 2)
            accs.append(val_acc(cache.labels[val], predict_logits(head, feats[val])[0].numpy()))
        assert r["val_acc"] == pytest.approx(max(accs))
        assert r["best_iteration"] == checks[int(np.argmax(accs))]
        found_earlier |= r["best_iteration"] < 60
    assert found_earlier  # at least one run is tested on an earlier checkpoint than the final one


def test_finetune_trains_every_parameter_with_family_lr_and_lr_grid(tmp_path: Path) -> None:
    """End to end = every parameter (conv1, embeddings, ln_pre/ln_post, proj too); encoder lr
    1e-7 for ViTs and 1e-6 for CNNs (FMMIC Common_Main.py l. 32-33, 281-284); a grid is
    selected on val."""
    from featcache.pipelines.bench_medmnist import _encoder_for_finetuning, encoder_family

    backbone = _encoder_for_finetuning(BackboneSpec.parse("tiny-clip"), 2, torch.device("cpu"))
    frozen = [n for n, p in backbone.visual.named_parameters() if not p.requires_grad]
    assert frozen == []
    assert encoder_family(backbone.visual) == "vit"
    assert encoder_family(load_backbone("timm:test_resnet", "random").visual) == "cnn"
    assert encoder_family(load_backbone(TIMM_TINY, "random").visual) == "vit"

    res = run(_quick(tmp_path, methods=("finetune",), iterations=3, batch_size=8))
    assert res.metrics["encoder_lr"].to_list() == [1e-7]
    res = run(_quick(tmp_path, methods=("finetune",), iterations=3, batch_size=8,
                     encoder_lrs=(0.0, 1e-4), out=str(tmp_path / "grid")))
    assert sorted(res.metrics["encoder_lr"].to_list()) == [0.0, 1e-4]
    assert res.metrics["selected"].sum() == 1
    assert res.summary["encoder_lr"].to_list()[0] in (0.0, 1e-4)


def test_input_224_bilinear_by_default_recorded_and_vit_size_advice(tmp_path: Path) -> None:
    cfg = _quick(tmp_path, backbones=("timm:test_resnet:random",), input_size="paper", iterations=2, batch_size=4)
    assert cfg.input_size == "paper" and cfg.interpolation == "bilinear"
    res = run(cfg)
    meta = open_cache(res.caches[0]).meta
    assert meta["preprocessing"]["size"] == 224 and meta["preprocessing"]["interpolation"] == "bilinear"
    assert res.caches[0].name.endswith("-scale-in224-bilinear.h5")
    config = json.loads((res.out / "config.json").read_text())
    assert config["backbones_resolved"][0]["input_size"] == 224
    assert config["extraction"][0]["preprocessing"]["interpolation"] == "bilinear"
    assert res.metrics["feature_dim"].to_list() == [open_cache(res.caches[0]).cls_dim]
    with pytest.raises(FeatcacheError, match="cannot encode 224x224 inputs.*--input-size model"):
        run(_quick(tmp_path, input_size="paper", iterations=2, out=str(tmp_path / "vit")))


def test_probe_sits_on_pre_projection_feature_by_default(tmp_path: Path) -> None:
    """The paper's timm CLIP has its head on the 768-d pre-projection feature of ViT-B/16."""
    assert BenchConfig(datasets=("pneumoniamnist",)).feature == "cls"
    res = run(_quick(tmp_path, iterations=2, batch_size=4))
    cache = open_cache(res.caches[0])
    assert cache.cls_dim == 64 and cache.embed_dim == 32  # tiny-clip: width 64, embed 32
    assert res.metrics["feature_dim"].to_list() == [64]


def test_pad_norm_pads_with_zero_after_normalisation() -> None:
    from featcache.preprocess import RESIZE_MODES

    assert RESIZE_MODES == ("scale", "pad", "pad-norm")
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    x = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    ours = Preprocessing(size=64, mean=mean, std=std, resize="pad")
    theirs = Preprocessing(size=64, mean=mean, std=std, resize="pad-norm")
    a = ours.normalize(ours.resize_arrays(x, 64), torch.float32)
    b = theirs.normalize(theirs.resize_arrays(x, 64), torch.float32)
    inner = (slice(None), slice(None), slice(18, 46), slice(18, 46))
    torch.testing.assert_close(a[inner], b[inner])  # the image itself is the same
    border = b.clone()
    border[inner] = 0
    assert border.abs().max() < 0.5 / 255 / min(std) + 1e-6  # zero within uint8 rounding
    assert (a[:, :, :18].mean((0, 2, 3)) < -1.4).all()  # black: (0 - mean) / std


def test_binary_head_bce_and_first_n_per_class(tmp_path: Path) -> None:
    """FMMIC's binary head: one logit, BCE (Common_Trainer.py l. 351-352); its data-efficiency
    sets: the first N rows per class (dataset.py l. 241-245)."""
    from featcache.pipelines.bench_medmnist import binary_scores

    z = np.array([[-2.0], [0.0], [3.0]])
    p1 = np.exp(binary_scores(z))[:, 1] / np.exp(binary_scores(z)).sum(1)
    np.testing.assert_allclose(p1, 1 / (1 + np.exp(-z[:, 0])))
    res = run(_quick(tmp_path, methods=("linear", "finetune"), binary_head="bce", iterations=6,
                     batch_size=8, lrs=(1e-2,), finetune_head_lr=1e-2, encoder_lrs=(0.0,)))
    m = res.metrics.sort("method")
    assert m["acc"][0] == m["acc"][1] and m["auc"][0] == pytest.approx(m["auc"][1], abs=1e-6)
    soft = run(_quick(tmp_path, iterations=6, batch_size=8, lrs=(1e-2,), out=str(tmp_path / "soft")))
    assert soft.metrics["val_auc"][0] != m.filter(pl.col("method") == "linear")["val_auc"][0]

    labels = np.array([1, 0, 0, 1, 0, 1, 1, 0, 2, 2])
    train = np.arange(10)
    first = [per_class_subset(labels, train, 2, s, draw="first").tolist() for s in (0, 1)]
    assert first == [[0, 1, 2, 3, 8, 9]] * 2
    assert per_class_subset(labels, train, 2, 0).tolist() != per_class_subset(labels, train, 2, 1).tolist()


def test_auc_with_a_class_absent_from_test_is_marked() -> None:
    """medmnist 3.0.2 evaluator.py l. 157-163 sums every class's AUC: NaN when one is absent."""
    from featcache.pipelines.bench_medmnist import table_markdown

    y = np.array([0, 0, 1, 1, 0, 1])  # class 2 absent
    s = np.eye(3)[[0, 1, 1, 1, 0, 0]] + 0.1
    got = medmnist_figures(y, s)
    assert got["classes_absent"] == 1 and math.isnan(got["auc_official"]) and 0 <= got["auc"] <= 1
    full = medmnist_figures(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 0]])
    assert full["classes_absent"] == 0 and full["auc_official"] == full["auc"]
    table = pl.DataFrame([{"backbone": "b", "method": "linear", "size": 28, "resize": "scale",
                           "d_acc": 0.5, "d_acc_std": 0.0, "d_auc": got["auc"], "d_auc_std": 0.0,
                           "d_classes_absent": 1}])
    md = table_markdown(table, ("d",))
    assert " †" in md and "official medmnist evaluator's AUC is NaN" in md


def test_constant_predictions_warn_and_config_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    _, arrays = write_medmnist(root, "pneumoniamnist", num_classes=2, sizes=(12, 6, 8), seed=1)
    np.savez(root / "pneumoniamnist.npz", **{k: (v * 0 if k.endswith("images") else v) for k, v in arrays.items()})
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        res = run(BenchConfig(datasets=("pneumoniamnist",), root="data", backbones=("tiny-clip",), seeds=(0,),
                              input_size="model", iterations=5, batch_size=4, out="run", cache_dir="c",
                              progress=False))
    assert "for every test row" in caplog.text and "the features may carry no signal" in caplog.text
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["root"] == str(tmp_path / "data") and config["out"] == str(tmp_path / "run")
    assert config["cache_dir"] == str(tmp_path / "c") and config["caches"] == [str(res.caches[0].resolve())]
    assert config["device_requested"] == "auto" and config["device"] in ("cpu", "cuda", "cuda:0", "mps")
    assert config["extraction"][0]["precision"] in ("fp32", "bf16")


def test_bare_timm_spec_gets_bench_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FeatcacheError) as err:
        run(_quick(tmp_path, backbones=(TIMM_TINY,), iterations=1))
    msg = str(err.value)
    assert "timm:test_vit:random" in msg and "--pretrained" not in msg
