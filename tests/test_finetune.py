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

from featcache.cli import main
from featcache.datasets import build_manifest
from featcache.errors import FeatcacheError
from featcache.metrics import METRIC_KEYS
from featcache.models import load_backbone
from featcache.peft import make_config
from featcache.preprocess import Preprocessing, five_crops, pil_to_uint8
from pipelines import finetune
from pipelines.finetune import (
    FinetuneConfig,
    TrainImages,
    build_model,
    evaluate_logits,
    random_resized_crop,
)

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
    assert config["trainable_params"] == metrics["trainable_params"] > 0
    table = pl.read_parquet(out / "metrics.parquet")
    assert table.height == 1 and table["method"][0] == "adaptformer"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["seed-0.pt"]


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
    _, pil_tte = prep.pil_transforms()
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
    data = TrainImages(manifest, np.arange(2), canvas=40)
    images, hw, labels = data.__getitems__([0, 1])
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
    from pipelines.extract import ExtractConfig
    from pipelines.extract import run as extract

    cache = extract(ExtractConfig(dataset="synthetic-lt", dataset_options=SYNTH, out=str(tmp_path / "c.h5"),
                                  workers=0, progress=False)).out
    res = CliRunner().invoke(main, ["finetune", "--method", "classifier", "--cache", str(cache), "--epochs", "5",
                                    "--out", str(tmp_path / "cls"), "--no-progress"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["head"] == "cosine" and config["feature"] == "cls" and config["loss"] == "la"
    assert config["sigma"] == 25.0 and config["init"] == "text" and config["protocol"] == "lift"
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    assert metrics["method"] == "classifier" and 0.0 <= metrics["acc"] <= 1.0


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
