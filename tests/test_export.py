"""``featcache export``: the artefact gives ``predict --images``'s logits, and the README's
loading examples run in a fresh Python in which featcache cannot be imported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.images import backbone_for_cache, image_paths
from featcache.pipelines import export, train_head
from featcache.pipelines.predict import predict_images
from featcache.preprocess import five_crops, pil_to_uint8
from tests.test_predict import CLASSES, setup  # noqa: F401  (the module-scoped fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def _views(meta: dict, paths: list[Path], tte: bool) -> torch.Tensor:
    """uint8 [B, V, 3, S, S] made as extraction makes them (featcache's own preprocessing)."""
    from featcache.preprocess import Preprocessing

    prep = Preprocessing(size=meta["size"], mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                         interpolation=meta["interpolation"], resize_mode=meta["resize_mode"], tte=tte)
    standard, big = prep.pil_transforms()
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        out.append(five_crops(pil_to_uint8(big(im))[None], prep.size)[0] if tte else pil_to_uint8(standard(im))[None])
    return torch.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "tfa"])
def test_artefact_logits_equal_predict_images(setup: dict, kind: str, tmp_path: Path) -> None:  # noqa: F811
    import onnxruntime as ort

    run_dir = setup[kind]
    paths = image_paths([str(setup["root"] / "test")])
    pred = predict_images(run_dir, [str(p) for p in paths], out=tmp_path / "p", device="cpu", progress=False)
    want_logits = np.array(pred.table["logits"].to_list())
    want_probs = pred.table.select([f"prob_{c}" for c in CLASSES]).to_numpy()
    for suffix in (".pt2", ".onnx"):
        res = export.run(export.ExportConfig(run=str(run_dir), out=str(tmp_path / f"m{suffix}")))
        x = _views(res.metadata, paths, tte=kind == "linear")  # the linear run used TTE
        if suffix == ".pt2":
            extra = {"featcache.json": ""}
            model = torch.export.load(res.out, extra_files=extra).module()
            assert json.loads(extra["featcache.json"])["class_names"] == list(CLASSES)
            logits, probs = (t.numpy() for t in model(x))
        else:
            sess = ort.InferenceSession(str(res.out))
            assert json.loads(sess.get_modelmeta().custom_metadata_map["featcache"])["views"] == res.metadata["views"]
            logits, probs = sess.run(None, {"views": x.numpy()})
        np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(probs, want_probs, atol=1e-5)


def _readme_block(name: str) -> str:
    """The fenced python block after ``<!-- example: NAME -->`` in the README."""
    text = README.read_text()
    m = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no example block '{name}'"
    return m.group(1)


@pytest.mark.slow
def test_readme_loading_examples_run_without_featcache(setup: dict, tmp_path: Path) -> None:  # noqa: F811
    """The README's two examples, verbatim, in ``python -I -S`` with site-packages on the path but
    no .pth files processed, so the editable featcache install is not importable."""
    run_dir = tmp_path / "plain"
    train_head.run(train_head.TrainHeadConfig(cache=str(setup["cache"]), head="linear", seeds=(0, 1), epochs=3,
                                              batch_size=8, device="cpu", out=str(run_dir)))
    image = next((setup["root"] / "test" / "bcc").iterdir())
    shutil.copy(image, tmp_path / "image.png")
    pred = predict_images(run_dir, [str(image)], out=tmp_path / "p", device="cpu", progress=False)
    for fmt in ("pt2", "onnx"):
        r = CliRunner().invoke(main, ["export", "--run", str(run_dir), "--out", str(tmp_path / f"model.{fmt}")])
        assert r.exit_code == 0, r.output
        code = (f"import sys\nsys.path.append({sysconfig.get_paths()['purelib']!r})\n"
                + "try:\n    import featcache\nexcept ImportError:\n    pass\n"
                + "else:\n    raise SystemExit('featcache is importable')\n"
                + _readme_block(fmt) + "\nimport numpy\nprint('LOGITS', numpy.asarray(logits).tolist())\n")
        done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.split("LOGITS", 1)[1])
        np.testing.assert_allclose(got, pred.table["logits"].to_list(), atol=1e-4)
        assert pred.table["pred"][0] in done.stdout  # the example prints the class name


def test_export_refuses_bad_out_and_existing_file(setup: dict, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(FeatcacheError, match=r"\.pt2"):
        export.ExportConfig(run=str(setup["linear"]), out=str(tmp_path / "m.zip"))
    (tmp_path / "m.pt2").write_bytes(b"x")
    with pytest.raises(FeatcacheError, match="already exists"):
        export.run(export.ExportConfig(run=str(setup["linear"]), out=str(tmp_path / "m.pt2")))


def test_export_uses_the_recorded_weights(setup: dict) -> None:  # noqa: F811
    from featcache.cache import open_cache

    meta = open_cache(setup["cache"]).meta
    backbone, prep, dtype = backbone_for_cache(meta)
    assert backbone.weights_id == meta["weights_id"] and prep.size == meta["preprocessing"]["size"]
    assert dtype == torch.float32
