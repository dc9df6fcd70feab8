"""``predict --images`` and ``export`` on LIFT (``featcache finetune``) runs, tiny model, CPU:
predicting a run's own test images gives its own test logits; the artefact gives predict's;
LoRA merged into the attention weights gives the unmerged logits."""

from __future__ import annotations

import json
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
from featcache.images import image_paths
from featcache.lift_data import lift_eval_transforms
from featcache.pipelines import export, finetune
from featcache.pipelines.lift_run import load_lift_run
from featcache.pipelines.predict import predict_images, predict_run
from featcache.preprocess import five_crops, pil_to_uint8
from tests.test_predict import CLASSES, noisy_folder


@pytest.fixture(scope="module")
def lift(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("lift")
    root = noisy_folder(tmp / "imgs", {"train": CLASSES, "test": {k: 2 for k in CLASSES}})
    common = dict(dataset="folder", root=str(root), epochs=2, batch_size=8, lr=0.05, progress=False, workers=0,
                  device="cpu")
    runs = {
        # AdaptFormer with TTE, two seeds; LoRA on q, v and out without TTE
        "adaptformer": finetune.run(finetune.FinetuneConfig(method="adaptformer", tte=True, seeds=(0, 1),
                                                            out=str(tmp / "af"), **common)).out_dir,
        "lora": finetune.run(finetune.FinetuneConfig(method="lora", method_options={"targets": ("q", "v", "out")},
                                                     seeds=(0,), out=str(tmp / "lora"), **common)).out_dir,
    }
    return {"tmp": tmp, "root": root, **runs}


def _run_logits(run_dir: Path, root: Path, paths: list[str]) -> dict[int, np.ndarray]:
    """Each seed's own test logits (the run's predictions.parquet), in the order of ``paths``."""
    manifest = build_manifest("folder", root)
    row_of = {str(Path(s).resolve()): r for r, s in enumerate(manifest.sources)}
    rows = [row_of[str(Path(p).resolve())] for p in paths]
    table = pl.read_parquet(run_dir / "predictions.parquet")
    out = {}
    for seed in table["seed"].unique().to_list():
        own = table.filter(pl.col("seed") == seed)
        scores = dict(zip(own["row"].to_list(), own["scores"].to_list(), strict=True))
        out[seed] = np.array([scores[r] for r in rows])
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("kind", ["adaptformer", "lora"])
def test_predict_images_gives_the_runs_own_test_logits(lift: dict, kind: str, tmp_path: Path) -> None:
    run_dir = lift[kind]
    res = predict_images(run_dir, [str(lift["root"] / "test")], out=tmp_path / "p", device="cpu", per_seed=True,
                         progress=False, batch_size=4)
    paths = res.table["path"].to_list()
    assert len(paths) == 2 * len(CLASSES)
    theirs = _run_logits(run_dir, lift["root"], paths)
    for seed, ref in theirs.items():
        got = res.table.select([f"prob_{c}_seed{seed}" for c in CLASSES]).to_numpy()
        np.testing.assert_allclose(got, _softmax(ref), atol=1e-6)
    mean = np.mean(list(theirs.values()), axis=0)
    np.testing.assert_allclose(np.array(res.table["logits"].to_list()), mean, atol=1e-5)
    assert res.table["pred"].to_list() == [list(CLASSES)[i] for i in mean.argmax(1)]
    assert (tmp_path / "p" / "predictions.csv").exists()
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["pipeline"] == "finetune" and config["views"] == (
        ["tte_c", "tte_tl", "tte_tr", "tte_bl", "tte_br"] if kind == "adaptformer" else ["standard"])


def test_lora_merged_equals_unmerged(lift: dict) -> None:
    run = load_lift_run(lift["lora"])
    backbone, prep, _ = run.backbone(None, torch.device("cpu"))
    plain = run.seed_model(backbone, 0, torch.device("cpu"))
    merged = run.seed_model(backbone, 0, torch.device("cpu"), merge=True)
    assert any(b.lora is not None for b in plain.visual.transformer.resblocks)
    assert all(b.lora is None for b in merged.visual.transformer.resblocks)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    delta = plain.visual.transformer.resblocks[0].attn.in_proj_weight - merged.visual.transformer.resblocks[0].attn.in_proj_weight
    assert delta.abs().max() > 0  # the trained deltas are not zero, so the check below means something
    x = torch.randn(6, 3, prep.size, prep.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), plain(x), atol=1e-5, rtol=1e-5)


def _lift_views(meta: dict, paths: list[Path]) -> torch.Tensor:
    """uint8 [B, V, 3, S, S] through LIFT's test transforms, as the artefact's metadata describes them."""
    tte = len(meta["views"]) == 5
    standard, big = lift_eval_transforms(meta["size"], tte, meta["tte_expand"])
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        out.append(five_crops(pil_to_uint8(big(im))[None], meta["size"])[0] if tte else pil_to_uint8(standard(im))[None])
    return torch.stack(out)


def _export_check(lift: dict, kind: str, suffix: str, tmp_path: Path) -> None:
    run_dir = lift[kind]
    paths = image_paths([str(lift["root"] / "test")])
    pred = predict_images(run_dir, [str(p) for p in paths], out=tmp_path / "p", device="cpu", progress=False)
    want_logits = np.array(pred.table["logits"].to_list())
    want_probs = pred.table.select([f"prob_{c}" for c in CLASSES]).to_numpy()
    res = export.run(export.ExportConfig(run=str(run_dir), out=str(tmp_path / f"m{suffix}")))
    meta = res.metadata
    assert meta["class_names"] == list(CLASSES) and meta["pipeline"] == "finetune"
    assert meta["resize_to"] == meta["size"] * 8 // 7 and meta["interpolation"] == "bilinear"
    x = _lift_views(meta, paths)
    if suffix == ".pt2":
        extra = {"featcache.json": ""}
        model = torch.export.load(res.out, extra_files=extra).module()
        assert json.loads(extra["featcache.json"])["method"]["name"] == kind
        logits, probs = (t.numpy() for t in model(x))
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(res.out))
        assert json.loads(sess.get_modelmeta().custom_metadata_map["featcache"])["views"] == meta["views"]
        logits, probs = sess.run(None, {"views": x.numpy()})
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)


@pytest.mark.parametrize("kind", ["adaptformer", pytest.param("lora", marks=pytest.mark.slow)])
def test_pt2_artefact_gives_predicts_logits(lift: dict, kind: str, tmp_path: Path) -> None:
    _export_check(lift, kind, ".pt2", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["adaptformer", "lora"])
def test_onnx_artefact_gives_predicts_logits(lift: dict, kind: str, tmp_path: Path) -> None:
    _export_check(lift, kind, ".onnx", tmp_path)


def test_refusals_name_the_way_out(lift: dict, tmp_path: Path) -> None:
    run_dir = lift["adaptformer"]
    test = str(lift["root"] / "test")
    with pytest.raises(FeatcacheError, match="fine-tuned with tiny-clip weights.*drop --pretrained"):
        predict_images(run_dir, [test], out=tmp_path / "a", device="cpu", pretrained="openai", progress=False)
    with pytest.raises(FeatcacheError, match="drop --cache"):
        predict_images(run_dir, [test], out=tmp_path / "b", device="cpu", cache="c.h5", progress=False)
    with pytest.raises(FeatcacheError, match="--images"):  # cached features cannot feed a fine-tuned tower
        predict_run(run_dir, "c.h5", out=tmp_path / "c", device="cpu")
    config = json.loads((run_dir / "config.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    for name in ("metrics.json", "checkpoints"):
        (old / name).symlink_to(run_dir / name)
    (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "weights_id"}))
    with pytest.raises(FeatcacheError, match="no weights_id"):
        predict_images(old, [test], out=tmp_path / "d", device="cpu", progress=False)


def test_medmnist_benchmark_runs_say_why_not(tmp_path: Path) -> None:
    run_dir = tmp_path / "bench"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"caches": ["a.h5"], "recipe": "paper"}))
    with pytest.raises(FeatcacheError, match="MedMNIST benchmark run.*train-head --cache CACHE"):
        predict_images(run_dir, [str(tmp_path)], out=tmp_path / "o", device="cpu")


def test_cli_predict_and_export_a_lift_run(lift: dict, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["predict", "--run", str(lift["lora"]), "--images", str(lift["root"] / "test"),
                                  "--device", "cpu", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "Predicted 6 image(s)" in r.output and (tmp_path / "p" / "predictions.parquet").exists()
    r = CliRunner().invoke(main, ["export", "--run", str(lift["lora"]), "--out", str(tmp_path / "m.pt2")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.pt2").exists()


@pytest.mark.slow
def test_readme_pt2_example_runs_a_lift_artefact_without_featcache(lift: dict, tmp_path: Path) -> None:
    """The README's .pt2 loading example, verbatim, on a LoRA run's artefact (LIFT's Resize(S*8//7)
    comes from the metadata's resize_to), in a Python where featcache cannot be imported."""
    import shutil
    import subprocess
    import sys
    import sysconfig

    from tests.test_export import _readme_block

    image = next((lift["root"] / "test" / "bcc").iterdir())
    shutil.copy(image, tmp_path / "image.png")
    pred = predict_images(lift["lora"], [str(image)], out=tmp_path / "p", device="cpu", progress=False)
    export.run(export.ExportConfig(run=str(lift["lora"]), out=str(tmp_path / "model.pt2")))
    code = (f"import sys\nsys.path.append({sysconfig.get_paths()['purelib']!r})\n"
            + "try:\n    import featcache\nexcept ImportError:\n    pass\n"
            + "else:\n    raise SystemExit('featcache is importable')\n"
            + _readme_block("pt2") + "\nimport numpy\nprint('LOGITS', numpy.asarray(logits).tolist())\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.split("LOGITS", 1)[1])
    np.testing.assert_allclose(got, pred.table["logits"].to_list(), atol=1e-4)


def test_weights_from_a_file_are_checked_by_hash(lift: dict, tmp_path: Path) -> None:
    """A run fine-tuned from a weights file: predict needs that file (SHA-256 as recorded), refuses
    another one, and with the right one (moved elsewhere) gives the run's own test logits."""
    from featcache.models import load_backbone

    a = load_backbone("tiny-clip")
    for p in a.model.parameters():
        p.data.add_(0.01)
    weights = tmp_path / "w.pt"
    torch.save(a.model.state_dict(), weights)
    run_dir = finetune.run(finetune.FinetuneConfig(dataset="folder", root=str(lift["root"]), method="adaptformer",
                                                   pretrained=str(weights), epochs=1, batch_size=8, progress=False,
                                                   workers=0, device="cpu", out=str(tmp_path / "run"))).out_dir
    assert json.loads((run_dir / "config.json").read_text())["weights_id"].startswith("sha256:")
    moved = tmp_path / "moved.pt"
    weights.rename(moved)
    test = str(lift["root"] / "test")
    with pytest.raises(FeatcacheError, match="not there; pass --pretrained"):
        predict_images(run_dir, [test], out=tmp_path / "a", device="cpu", progress=False)
    for p in a.model.parameters():
        p.data.add_(0.01)
    other = tmp_path / "other.pt"
    torch.save(a.model.state_dict(), other)
    with pytest.raises(FeatcacheError, match="but the run was fine-tuned from sha256:"):
        predict_images(run_dir, [test], out=tmp_path / "b", device="cpu", pretrained=str(other), progress=False)
    res = predict_images(run_dir, [test], out=tmp_path / "c", device="cpu", pretrained=str(moved), progress=False)
    ref = _run_logits(run_dir, lift["root"], res.table["path"].to_list())[0]
    np.testing.assert_allclose(np.array(res.table["logits"].to_list()), ref, atol=1e-5)
