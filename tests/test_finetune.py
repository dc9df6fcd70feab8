"""LIFT fine-tuning (``featcache finetune``, DESIGN.md §2) on the tiny random-weight model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms as T

from featcache import lift_data
from featcache.cli import main
from featcache.datasets import build_manifest
from featcache.errors import FeatcacheError
from featcache.finetuning import train_step
from featcache.lift_data import TrainImages, random_resized_crop
from featcache.metrics import METRIC_KEYS
from featcache.models import load_backbone
from featcache.peft import make_config
from featcache.pipelines import finetune
from featcache.pipelines.finetune import FinetuneConfig, build_model, evaluate_logits
from featcache.preprocess import Preprocessing, five_crops, pil_to_uint8

REPO = Path(__file__).resolve().parents[1]
# A small long-tailed set: 6 classes, 40..2 training images, 4 test images per class (32 px).
SYNTH = {"max_per_class": 40, "test_per_class": 4}


def _cfg(tmp_path: Path, name: str = "run", **kw: object) -> FinetuneConfig:
    kw.setdefault("dataset", "synthetic-lt")
    kw.setdefault("dataset_options", SYNTH)
    kw.setdefault("epochs", 3)
    kw.setdefault("batch_size", 32)
    kw.setdefault("lr", 0.05)
    kw.setdefault("progress", False)
    return FinetuneConfig(out=str(tmp_path / name), **kw)


def test_short_run_lowers_loss_and_writes_the_run_directory(tmp_path: Path) -> None:
    result = finetune.run(_cfg(tmp_path, tte=True))
    out = result.out_dir
    for name in ("config.json", "metrics.json", "metrics.parquet", "predictions.parquet", "splits.parquet"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics and f"{key}_std" in metrics
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    seed = metrics["per_seed"][0]
    assert seed["seed"] == 0 and seed["tte"] is True
    losses = seed["epoch_loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # with and without TTE both reported; LIFT's groups come from training counts (< 20 = few)
    assert set(METRIC_KEYS) <= set(metrics["no_tte"])
    assert metrics["few_acc"] is not None and metrics["many_acc"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "adaptformer" and config["protocol"] == "lift"
    assert config["method_resolved"]["bottleneck"] == 1  # 2^max(0, floor(log2(6 / 4)))
    # each image-handling choice is recorded (LIFT's test transforms at S = 32: 32 * 8 // 7 = 36)
    assert config["preprocessing"]["eval"].startswith("Resize(36, bilinear) + CenterCrop(32)")
    assert config["preprocessing"]["eval_tte"].startswith("Resize(56, bilinear) + FiveCrop(32)")
    assert config["preprocessing"]["train_canvas"] is None and config["epochs"] == 3
    assert config["trainable_params"] == metrics["trainable_params"] > 0
    table = pl.read_parquet(out / "metrics.parquet")
    assert table.height == 1 and table["method"][0] == "adaptformer"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["seed-0.pt"]


@pytest.mark.slow
def test_checkpoint_holds_only_trainable_tensors_and_resume_matches(tmp_path: Path, monkeypatch) -> None:
    whole = finetune.run(_cfg(tmp_path, "whole", epochs=2, seeds=(3,)))
    ckpt = torch.load(whole.out_dir / "checkpoints" / "seed-3.pt", weights_only=True)

    backbone = load_backbone("tiny-clip")
    model, _ = build_model(backbone, make_config("adaptformer"), [str(c) for c in range(6)],
                           init="random", device=torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt["trainable"]) == trainable
    assert all(".adaptformer." in n or n == "head.weight" for n in trainable)
    assert sum(t.numel() for t in ckpt["trainable"].values()) == whole.metrics["trainable_params"]
    assert ckpt["epoch"] == 2 and ckpt["optimizer"] is None  # momentum dropped once finished
    assert ckpt["config"]["method"] == "adaptformer"

    # interrupt after the first epoch's checkpoint, then resume
    real_save = finetune.save_checkpoint

    def save_then_crash(path: Path, state: dict) -> None:
        real_save(path, state)
        raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(finetune, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(_cfg(tmp_path, "cut", epochs=2, seeds=(3,)))
    monkeypatch.setattr(finetune, "save_checkpoint", real_save)
    partial = torch.load(tmp_path / "cut" / "checkpoints" / "seed-3.pt", weights_only=True)
    assert partial["epoch"] == 1 and partial["optimizer"] is not None
    with pytest.raises(FeatcacheError, match="--resume"):  # never overwritten silently
        finetune.run(_cfg(tmp_path, "cut", epochs=2, seeds=(3,)))
    with pytest.raises(FeatcacheError, match="other settings"):
        finetune.run(_cfg(tmp_path, "cut", epochs=2, seeds=(3,), lr=0.1, resume=True))
    resumed = finetune.run(_cfg(tmp_path, "cut", epochs=2, seeds=(3,), resume=True))
    final = torch.load(resumed.out_dir / "checkpoints" / "seed-3.pt", weights_only=True)
    assert final["epoch_loss"] == ckpt["epoch_loss"]
    for name, tensor in ckpt["trainable"].items():
        torch.testing.assert_close(final["trainable"][name], tensor, rtol=0, atol=0)


def test_tte_evaluation_averages_the_logits_of_five_crops(tmp_path: Path) -> None:
    # non-square files: TTE resizes the shorter side to S + 24 and cuts five S x S crops
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)
            arr[..., c] = 255
            Image.fromarray(arr).save(root / name / f"{i}.png")
    manifest = build_manifest("folder", root)
    backbone = load_backbone("tiny-clip")
    torch.manual_seed(0)
    model, _ = build_model(backbone, make_config("lora"), ["a", "b"], device=torch.device("cpu"))
    with torch.no_grad():  # move LoRA off its zero init so the crops see an adapted model
        for p in model.visual.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    prep = Preprocessing.from_open_clip(backbone.preprocess, tte=True)
    rows = np.arange(len(manifest))
    standard, tte = evaluate_logits(model, manifest, rows, prep, batch_size=3, workers=0,
                                    device=torch.device("cpu"), dtype=torch.float32)
    # LIFT's TTE transform (trainer.py:119-120): torchvision's Resize(S + 24), bilinear, then FiveCrop
    pil_tte = T.Resize(prep.size + 24, interpolation=T.InterpolationMode.BILINEAR)
    expected, per_crop = [], []
    with torch.no_grad():
        for i in rows:
            crops = five_crops(pil_to_uint8(pil_tte(manifest.load(int(i))))[None], prep.size)[0]  # [5, 3, S, S]
            assert pil_tte(manifest.load(int(i))).size == (round(70 * 56 / 45), 56)  # shorter side S + 24
            logits = model(prep.normalize(crops, torch.float32))  # [5, C]
            per_crop.append(logits)
            expected.append(logits.mean(0))
    np.testing.assert_allclose(tte, torch.stack(expected).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(tte, torch.stack([p[0] for p in per_crop]).numpy(), atol=1e-4)  # not just one crop
    assert not np.allclose(tte, standard, atol=1e-4)


def test_device_crops_stay_inside_each_image(tmp_path: Path) -> None:
    # solid-colour files of different sizes share one padded canvas; every crop must be that colour
    root = tmp_path / "solid"
    colours = {"a": (200, 40, 10), "b": (10, 90, 250)}
    for name, (w, h) in (("a", (20, 48)), ("b", (64, 9))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (w, h), colours[name]).save(root / name / "0.png")
    manifest = build_manifest("folder", root)
    data = TrainImages(manifest, np.arange(2), 16, canvas=40)
    images, hw, labels = data.__getitems__([(0, 0), (1, 0)])
    assert images.shape == (2, 3, 40, 40) and hw.tolist() == [[40, 17], [6, 40]]  # shrunk, aspect kept
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        crops = random_resized_crop(images, hw, 16, gen)  # [2, 3, 16, 16]
        for b, name in enumerate(manifest.descriptor.class_ids):
            want = torch.tensor(colours[name], dtype=torch.float32)[:, None, None].expand(3, 16, 16)
            torch.testing.assert_close(crops[b], want, rtol=0, atol=1e-3)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["finetune", "--dataset", "synthetic-lt", "--method", "adaptformr",
                               "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "Unknown fine-tuning method 'adaptformr'. Did you mean 'adaptformer'?" in res.output
    res = runner.invoke(main, ["finetune", "--method", "lora", "--cache", str(tmp_path / "c.h5")])
    assert res.exit_code == 2 and "only --method classifier" in res.output
    res = runner.invoke(main, ["finetune", "--dataset", "synthetic-lt", "--method-option", "bottleneck=0"])
    assert res.exit_code == 2 and "bottleneck" in res.output
    assert not (tmp_path / "x").exists()


def test_classifier_method_trains_from_the_cache_with_the_heads_pipeline(tmp_path: Path) -> None:
    from featcache.pipelines.extract import ExtractConfig
    from featcache.pipelines.extract import run as extract

    cache = extract(ExtractConfig(dataset="synthetic-lt", dataset_options=SYNTH, out=str(tmp_path / "c.h5"),
                                  workers=0, progress=False)).out
    res = CliRunner().invoke(main, ["finetune", "--method", "classifier", "--cache", str(cache), "--epochs", "5",
                                    "--out", str(tmp_path / "cls"), "--no-progress"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["head"] == "cosine" and config["feature"] == "cls" and config["loss"] == "la"
    assert config["sigma"] == 25.0 and config["init"] == "text" and config["protocol"] == "lift"
    # named for what it is: the cache's fixed views, not LIFT's augmented classifier baseline
    assert config["method"] == "classifier-cached" and "un-augmented" in config["features"]
    assert config["cache_preprocessing"]["interpolation"] == "bicubic"  # open_clip's, kept by extraction
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    assert metrics["method"] == "classifier-cached" and 0.0 <= metrics["acc"] <= 1.0
    help_text = CliRunner().invoke(main, ["finetune", "--help"]).output
    assert "un-augmented" in help_text and "classifier-cached" in help_text


def test_classifier_without_cache_is_the_augmented_baseline(tmp_path: Path) -> None:
    # LIFT's classifier baseline: the frozen tower sees fresh RandomResizedCrop + flip every epoch
    result = finetune.run(_cfg(tmp_path, method="classifier", epochs=1))
    config = json.loads((result.out_dir / "config.json").read_text())
    assert config["method"] == "classifier" and "RandomResizedCrop" in config["preprocessing"]["train"]
    assert result.metrics["backbone_trainable_params"] == 0


# ------------------------------------------------------------------ faithful to LIFT's code


def _photo(path: Path, width: int = 75, height: int = 50, seed: int = 0) -> Path:
    """A non-square, textured RGB image (smooth gradients plus noise), so resizes differ visibly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256], -1).astype(np.int64)
    arr = np.clip(arr + rng.integers(-40, 40, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_eval_transform_is_lifts_resize_8_7_then_centre_crop(tmp_path: Path) -> None:
    # LIFT trainer.py:142-144: Resize(S * 8 // 7) + CenterCrop(S), bilinear (torchvision's default)
    for c in ("a", "b"):
        _photo(tmp_path / "files" / c / "0.png", seed=ord(c))
    S = 32
    lift = T.Compose([T.Resize(int(S * 8 / 7), interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(S)])
    prep = Preprocessing.from_open_clip(load_backbone("tiny-clip").preprocess)
    assert prep.size == S
    for manifest in (build_manifest("folder", tmp_path / "files"),
                     build_manifest("synthetic-lt", None, max_per_class=3, test_per_class=2)):
        rows = np.arange(len(manifest))[:4]
        _, std, _ = lift_data.EvalImages(manifest, rows, prep).__getitems__(list(range(len(rows))))
        want = torch.stack([pil_to_uint8(lift(manifest.load(int(r)))) for r in rows])
        assert torch.equal(std, want)  # files and pre-decoded arrays alike
    # ... which is not open_clip's Resize(S) + CenterCrop(S), bicubic (the cache's standard view)
    im = manifest_im = build_manifest("folder", tmp_path / "files").load(0)
    assert not torch.equal(pil_to_uint8(lift(im)), pil_to_uint8(prep.pil_transforms()[0](manifest_im)))


def test_training_crops_come_from_the_full_image(tmp_path: Path) -> None:
    # LIFT trainer.py:102-104: RandomResizedCrop(S) + flip of the full image, no 1.5 S canvas
    _photo(tmp_path / "big" / "a" / "0.png", width=500, height=375)
    _photo(tmp_path / "big" / "b" / "0.png", width=375, height=500, seed=1)
    manifest = build_manifest("folder", tmp_path / "big")
    S = 32
    data = TrainImages(manifest, np.arange(2), S, seed=7)
    assert not data.crops_on_device
    images, hw, _ = data.__getitems__([(0, 3), (1, 3)])
    assert images.shape == (2, 3, S, S) and images.dtype == torch.uint8 and hw.tolist() == [[S, S]] * 2
    for k in range(2):
        im = manifest.load(k)
        rng = lift_data._augment_rng(7, 3, k)
        top, left, h, w = lift_data.rrc_box(im.size[1], im.size[0], rng)
        want = T.functional.resized_crop(im, top, left, h, w, [S, S], interpolation=T.InterpolationMode.BILINEAR)
        if rng.random() < 0.5:
            want = T.functional.hflip(want)
        assert torch.equal(images[k], pil_to_uint8(want))
    assert torch.equal(data.__getitems__([(0, 3)])[0][0], images[0])  # seeded by (seed, epoch, row)
    assert not torch.equal(data.__getitems__([(0, 4)])[0][0], images[0])  # a fresh crop next epoch
    # boxes on the full 375 x 500 image: many are larger than the old 1.5 S canvas allowed
    rng = np.random.default_rng(0)
    boxes = np.array([lift_data.rrc_box(375, 500, rng) for _ in range(2000)])  # [n, 4] top, left, h, w
    assert (boxes[:, 0] + boxes[:, 2] <= 375).all() and (boxes[:, 1] + boxes[:, 3] <= 500).all()
    assert (boxes[:, 2] > round(1.5 * S)).mean() > 0.9
    # the same distribution as torchvision's RandomResizedCrop.get_params (its own RNG)
    torch.manual_seed(0)
    blank = torch.zeros(3, 375, 500)
    tv = np.array([T.RandomResizedCrop.get_params(blank, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(2000)])
    for col in range(4):
        assert abs(boxes[:, col].mean() - tv[:, col].mean()) < 0.06 * tv[:, col].mean() + 3, col
    # the canvas is a flag, off by default
    assert FinetuneConfig(dataset="synthetic-lt").train_canvas is None
    assert TrainImages(manifest, np.arange(2), S, canvas=48).crops_on_device


def test_prompts_turn_underscores_into_spaces(tmp_path: Path, monkeypatch) -> None:
    # LIFT trainer.py:306: template.format(c.replace("_", " "))
    assert finetune.lift_prompts("a photo of a {}.", ["airplane_cabin", "alley"]) == [
        "a photo of a airplane cabin.", "a photo of a alley."]
    seen: list[str] = []
    real = finetune.models.text_features
    monkeypatch.setattr(finetune.models, "text_features",
                        lambda backbone, prompts, device: seen.extend(prompts) or real(backbone, prompts, device))
    build_model(load_backbone("tiny-clip"), make_config("classifier"), ["airplane_cabin", "bus_interior"],
                device=torch.device("cpu"))
    assert seen == ["a photo of a airplane cabin.", "a photo of a bus interior."]
    # Places-LT's classnames.txt ("airplane_cabin airplane_cabin") gives readable names
    from fixtures_data import write_lt_lists

    root = write_lt_lists(tmp_path / "places", "Places_LT", classnames=["airfield", "airplane_cabin", "alcove"])
    (root / "classnames.txt").write_text("airfield airfield\nairplane_cabin airplane_cabin\nalcove alcove\n")
    assert build_manifest("places-lt", root).descriptor.class_names == ("airfield", "airplane cabin", "alcove")


def test_lists_without_classnames_refuse_text_init(tmp_path: Path, caplog) -> None:
    from fixtures_data import write_lt_lists

    root = write_lt_lists(tmp_path / "inet")  # no classnames.txt
    with caplog.at_level("WARNING"):
        names = build_manifest("imagenet-lt", root).descriptor.class_names
    assert names == ("class 0", "class 1", "class 2") and "no classnames.txt" in caplog.text
    cfg = _cfg(tmp_path, dataset="imagenet-lt", root=str(root), dataset_options={}, epochs=1)
    with pytest.raises(FeatcacheError, match="no class names.*classnames=FILE.*--init random"):
        finetune.run(cfg)
    assert not (tmp_path / "run").exists()
    finetune.check_class_names(list(names), "random", "x")  # random init needs no names
    finetune.check_class_names(["tench", "goldfish"], "text", "x")


def test_cifar_ir10_and_ir50_groups_come_from_ir100_counts(tmp_path: Path) -> None:
    # LIFT trainer.py:158-164: many / medium / few from CIFAR100_IR100's counts for IR50 and IR10
    from fixtures_data import write_cifar100

    from featcache.datasets.cifar import cifar_lt_counts
    from featcache.splits import make_split

    root = write_cifar100(tmp_path, train_per_class=8, test_per_class=1)
    ir100 = np.array(cifar_lt_counts(100))
    want = {"many": np.flatnonzero(ir100 > 100).tolist(), "medium": np.flatnonzero((ir100 >= 20) & (ir100 <= 100)).tolist(),
            "few": np.flatnonzero(ir100 < 20).tolist()}
    assert want["few"] and want["many"]
    for imbalance in (100, 50, 10):
        m = build_manifest("cifar100-lt", root, imbalance=imbalance)
        split = make_split(m.labels, np.asarray(m.splits, dtype=object), m.descriptor, "lift", 0)
        assert split.groups == want, imbalance  # IR10's own counts (>= 50) would leave no few class


def test_epochs_default_comes_from_the_data_set(tmp_path: Path) -> None:
    # LIFT: 20 epochs on iNat2018 (scripts/run_tab1to4_main_results.sh:10), 10 elsewhere
    from fixtures_data import write_inat2018, write_lt_lists

    inat = build_manifest("inat2018", write_inat2018(tmp_path / "inat")).descriptor
    inet = build_manifest("imagenet-lt", write_lt_lists(tmp_path / "inet")).descriptor
    assert inat.finetune_epochs == 20
    assert finetune.resolve_epochs(FinetuneConfig(dataset="inat2018"), inat).epochs == 20
    assert finetune.resolve_epochs(FinetuneConfig(dataset="imagenet-lt"), inet).epochs == 10
    assert finetune.resolve_epochs(FinetuneConfig(dataset="inat2018", epochs=3), inat).epochs == 3
    params = {p.name: p for p in main.commands["finetune"].params}
    assert params["epochs"].default is None and "20 for inat2018" in params["epochs"].help


def test_head_and_loss_stay_fp32_under_bf16_autocast() -> None:
    backbone = load_backbone("tiny-clip")
    torch.manual_seed(0)
    model, _ = build_model(backbone, make_config("adaptformer"), [f"c{k}" for k in range(5)],
                           init="random", device=torch.device("cpu"))
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        feats = model.features(x)
    assert feats.dtype == torch.bfloat16 and logits.dtype == torch.float32  # the tower in bf16, the head not
    cfg = FinetuneConfig(dataset="synthetic-lt")
    loss_fn = finetune.make_loss(cfg, np.array([5, 4, 3, 2, 1]), torch.device("cpu"))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss = train_step(model, opt, loss_fn, x, torch.tensor([0, 1, 2, 3]), torch.device("cpu"), torch.bfloat16)
    assert loss.dtype == torch.float32


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_writes_one_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "featcache", "finetune",
           "--dataset", "synthetic-lt", "--option", "max_per_class=40", "--option", "test_per_class=4",
           "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--no-progress", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["seed-0.pt"]
    ckpt = torch.load(out / "checkpoints" / "seed-0.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["epoch_loss"]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert proc.stdout.count("Wrote run directory") == 1  # only rank 0 reports
