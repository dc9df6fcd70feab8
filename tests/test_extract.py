"""Extraction and the cache contract (DESIGN.md §4) on the tiny random-weight model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner
from fixtures_data import write_medmnist
from PIL import Image

from featcache.cache import CacheHeader, ShardStore, open_cache, write_cache
from featcache.cli import main
from featcache.datasets import build_manifest
from featcache.datasets.base import Descriptor
from featcache.errors import CacheError, DataError, FeatcacheError
from featcache.models import image_features, load_backbone
from featcache.pipelines.extract import ExtractConfig, run
from featcache.pipelines.import_features import ImportConfig
from featcache.pipelines.import_features import run as import_run
from featcache.preprocess import TTE_VIEWS, Preprocessing, five_crop_boxes, five_crops, pil_to_uint8

REPO = Path(__file__).resolve().parents[1]


def _folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (40, 30)) -> Path:
    """root/<class>/<i>.png with class-dependent colours (a `folder` data set)."""
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 60, (*size[::-1], 3), dtype=np.uint8)
            arr[..., c % 3] += 150
            Image.fromarray(arr).save(root / name / f"{name}_{i}.png")
    return root


def _extract(tmp_path: Path, name: str = "c.h5", **kw) -> Path:
    kw.setdefault("dataset", "synthetic-lt")
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return run(ExtractConfig(out=str(tmp_path / name), **kw)).out


def test_standard_view_equals_open_clip_preprocess_and_model(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"a": 3, "b": 2})
    out = _extract(tmp_path, dataset="folder", root=str(root), batch_size=2, chunk_size=3)
    cache = open_cache(out)
    backbone = load_backbone("tiny-clip")
    cfg = backbone.preprocess
    transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"])
    paths = [Path(s) for s in cache.sources]
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        emb, cls = image_features(backbone.visual, x)
        ref = backbone.model.encode_image(x)
    torch.testing.assert_close(cache.features("standard", "embed"), emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.features("standard", "cls"), cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls @ cache.projection, emb, atol=1e-5, rtol=1e-5)
    assert cache.logit_scale == pytest.approx(backbone.logit_scale)
    assert cache.text_features.shape == (len(cache.templates), 2, cache.embed_dim)
    torch.testing.assert_close(cache.text_features.norm(dim=-1), torch.ones(len(cache.templates), 2))


def test_tte_crop_boxes_are_centre_and_corners() -> None:
    s, e = 224, 24
    assert five_crop_boxes(s + e, s + e, s) == {
        "tte_c": (12, 12), "tte_tl": (0, 0), "tte_tr": (0, 24), "tte_bl": (24, 0), "tte_br": (24, 24)
    }
    # non-square (HAM10000 600x450 -> 331x248): corners flush with the real corners (LIFT)
    assert five_crop_boxes(248, 331, s) == {
        "tte_c": (12, 54), "tte_tl": (0, 0), "tte_tr": (0, 107), "tte_bl": (24, 0), "tte_br": (24, 107)
    }
    x = torch.arange(248 * 331).view(1, 1, 248, 331).expand(2, 3, -1, -1)
    crops = five_crops(x, s)  # [B, 5, 3, S, S]
    assert crops.shape == (2, 5, 3, s, s)
    for j, (top, left) in enumerate(five_crop_boxes(248, 331, s).values()):
        assert crops[0, j, 0, 0, 0] == top * 331 + left
        assert crops[0, j, 0, -1, -1] == (top + s - 1) * 331 + left + s - 1


def test_tte_views_equal_model_on_crops(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"a": 2, "b": 2}, size=(50, 40))
    cache = open_cache(_extract(tmp_path, dataset="folder", root=str(root), tte=True))
    assert cache.views == ["standard", *TTE_VIEWS]
    backbone = load_backbone("tiny-clip")
    prep = Preprocessing.from_open_clip(backbone.preprocess, tte=True)
    _, big = prep.pil_transforms()
    u8 = torch.stack([pil_to_uint8(big(Image.open(p).convert("RGB"))) for p in cache.sources])
    assert u8.shape[-2] == prep.size + 24 and u8.shape[-1] > u8.shape[-2]  # 50x40 keeps its aspect
    crops = five_crops(u8, prep.size)
    with torch.no_grad():
        for j, view in enumerate(TTE_VIEWS):
            emb, _ = image_features(backbone.visual, prep.normalize(crops[:, j], torch.float32))
            torch.testing.assert_close(cache.features(view), emb, atol=1e-5, rtol=1e-5)


def test_pad_puts_image_on_black_canvas() -> None:
    prep = Preprocessing(size=32, mean=(0, 0, 0), std=(1, 1, 1), resize="pad")
    x = torch.full((1, 3, 28, 28), 200, dtype=torch.uint8)
    y = prep.resize_arrays(x, 32)
    assert y.shape == (1, 3, 32, 32)
    assert (y[..., 2:30, 2:30] == 200).all() and y[..., :2, :].sum() == 0 and y[..., :, 30:].sum() == 0
    standard, _ = prep.pil_transforms()
    im = standard(Image.new("RGB", (28, 28), (200, 200, 200)))
    arr = np.asarray(im)
    assert arr.shape == (32, 32, 3) and arr[2:30, 2:30].min() == 200 and arr[:2].max() == 0
    scaled = Preprocessing(size=32, mean=(0, 0, 0), std=(1, 1, 1)).resize_arrays(x, 32)
    assert (scaled == 200).all()


def test_arrays_and_pil_paths_agree(tmp_path: Path) -> None:
    """Pre-decoded arrays (resized on the device) give nearly the PIL path's features."""
    backbone = load_backbone("tiny-clip")
    prep = Preprocessing.from_open_clip(backbone.preprocess)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (4, 28, 28, 3), dtype=np.uint8)
    dev = prep.resize_arrays(torch.from_numpy(arr).permute(0, 3, 1, 2), prep.size)
    standard, _ = prep.pil_transforms()
    pil = np.stack([np.asarray(standard(Image.fromarray(a))) for a in arr]).transpose(0, 3, 1, 2)
    diff = np.abs(dev.numpy().astype(int) - pil.astype(int))
    # PIL rounds to uint8 between its two 1-D passes; torch does not. On random noise (the
    # worst case: every overshoot clips) that costs a few levels at a few pixels.
    assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 2


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like image: gradients plus a little noise (resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + rng.integers(0, 40, (h, w))], -1)
    return img.astype(np.uint8)


def _jpeg_folder(root: Path) -> Path:
    """JPEGs of several sizes (up- and downscaled, odd offsets), a grey and a CMYK JPEG, a PNG."""
    sizes = {"a": [(45, 60), (150, 200), (37, 50)], "b": [(300, 200), (33, 33), (45, 60)]}
    for c, shapes in sizes.items():
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            Image.fromarray(_smooth(h, w, seed=i)).save(root / c / f"{c}{i}.jpg", quality=90)
    Image.fromarray(_smooth(40, 52, 7)).convert("L").save(root / "a" / "grey.jpg")
    Image.fromarray(_smooth(40, 52, 8)).convert("CMYK").save(root / "b" / "cmyk.jpg")
    Image.fromarray(_smooth(41, 30, 9)).save(root / "b" / "b9.png")
    return root


@pytest.mark.parametrize("library", ["torchcodec", "torchvision"])
def test_device_decoder_matches_pil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    """--decoder device (JPEGs decoded, resized and cropped on the device) gives the PIL
    path's pixels within one level, so the same features; TTE crops included."""
    import featcache.pipelines.extract
    from featcache.decode import jpeg_decoder

    name, decode = jpeg_decoder(torch.device("cpu"), prefer=library)
    if name != library:
        pytest.skip(f"{library} is not installed")
    monkeypatch.setattr(featcache.pipelines.extract, "jpeg_decoder", lambda device: (name, decode))
    root = _jpeg_folder(tmp_path / "imgs")
    backbone = load_backbone("tiny-clip")
    prep = Preprocessing.from_open_clip(backbone.preprocess, tte=True)
    standard, big = prep.pil_transforms()
    for path in sorted(root.rglob("*.jpg")):
        pil = Image.open(path).convert("RGB")
        ref_std = pil_to_uint8(standard(pil))
        ref_tte = five_crops(pil_to_uint8(big(pil))[None], prep.size)[0]
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        std, tte = prep.views_of_images([decode(data, torch.device("cpu"))])
        assert (std[0].int() - ref_std.int()).abs().max() <= 1, path.name
        assert (tte[0].int() - ref_tte.int()).abs().max() <= 1, path.name

    caches = {}
    for decoder in ("pil", "device"):
        caches[decoder] = open_cache(_extract(tmp_path, f"{decoder}.h5", dataset="folder", root=str(root),
                                              tte=True, decoder=decoder, batch_size=4))
    a, b = caches["pil"], caches["device"]
    assert a.ids == b.ids and a.fingerprint != b.fingerprint
    assert a.meta["decoder"] == "pil" and b.meta["decoder"] == f"device:{library}"
    assert a.model_fingerprint == b.model_fingerprint  # a head trained on one predicts on the other
    for view in a.views:
        cos = torch.nn.functional.cosine_similarity(a.features(view), b.features(view))
        assert cos.min() > 0.999, view


def test_device_decoder_names_bad_files(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "imgs")
    good = (root / "a" / "a1.jpg").read_bytes()
    (root / "a" / "a1.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (root / "b" / "b0.jpg").write_bytes(b"")  # empty
    with pytest.raises(DataError, match="a1.jpg"):
        _extract(tmp_path, dataset="folder", root=str(root), decoder="device")
    cache = open_cache(_extract(tmp_path, dataset="folder", root=str(root), decoder="device", skip_bad=True))
    assert sorted(Path(s["source"]).name for s in cache.skipped) == ["a1.jpg", "b0.jpg"]
    assert len(cache) == 7
    with pytest.raises(FeatcacheError, match="Unknown --decoder 'nvjpeg'"):
        ExtractConfig(dataset="folder", decoder="nvjpeg")


def test_grey_arrays_stay_one_channel_and_extract_as_rgb(tmp_path: Path) -> None:
    """A grey MedMNIST set is held as [N, H, W, 1] and gives the features of the same images
    stored as three equal channels (broadcast on the device, bit for bit)."""
    _, arrays = write_medmnist(tmp_path / "grey", "pneumoniamnist")
    rgb = {k: (np.repeat(v[..., None], 3, axis=3) if k.endswith("images") else v) for k, v in arrays.items()}
    (tmp_path / "rgb").mkdir()
    np.savez(tmp_path / "rgb" / "pneumoniamnist.npz", **rgb)
    assert build_manifest("medmnist", tmp_path / "grey", subset="pneumoniamnist").arrays.shape[-1] == 1
    caches = [
        open_cache(_extract(tmp_path, f"{name}.h5", dataset="medmnist", root=str(tmp_path / name),
                            dataset_options={"subset": "pneumoniamnist"}, tte=True))
        for name in ("grey", "rgb")
    ]
    for view in caches[0].views:
        assert torch.equal(caches[0].features(view), caches[1].features(view))


def test_jpeg_decoder_falls_back_and_says_when_none_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import featcache.decode as decode_mod

    def broken() -> None:
        raise ImportError("no module named torchcodec")

    def no_device_decoder():  # noqa: ANN202
        def decode(data: torch.Tensor, device: torch.device) -> torch.Tensor:
            raise RuntimeError("decode_jpeg: this build has no decoder for this device")
        return decode

    candidates = dict(decode_mod._CANDIDATES)
    monkeypatch.setitem(decode_mod._CANDIDATES, "torchcodec", no_device_decoder)
    name, decode = decode_mod.jpeg_decoder(torch.device("cpu"))
    assert name == "torchvision"  # a candidate that fails the probe is passed over
    monkeypatch.setitem(decode_mod._CANDIDATES, "torchvision", broken)
    with pytest.raises(FeatcacheError, match=r"no JPEG decoder that runs on cpu .*torchcodec: decode_jpeg.*torchvision: no module"):
        decode_mod.jpeg_decoder(torch.device("cpu"))
    assert set(candidates) == {"torchcodec", "torchvision"}


def test_arrays_cache_records_no_decoder_and_tte_keeps_model_fingerprint(tmp_path: Path) -> None:
    plain = open_cache(_extract(tmp_path, "plain.h5", decoder="device"))
    tte = open_cache(_extract(tmp_path, "tte.h5", tte=True))
    assert plain.meta["decoder"] is None  # arrays are neither decoded nor resized by PIL
    assert plain.model_fingerprint == tte.model_fingerprint and plain.fingerprint != tte.fingerprint


def _cli_extract_args(out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "extract", "--dataset", "synthetic-lt", "--option", "max_per_class=1500", "--option", "imbalance=10",
        "--workers", "0", "--batch-size", "16", "--chunk-size", "64", "--out", str(out), *extra,
    ]


@pytest.mark.slow
def test_killed_extraction_resumes_to_identical_cache(tmp_path: Path) -> None:
    ref = tmp_path / "ref.h5"
    assert CliRunner().invoke(main, _cli_extract_args(ref)).exit_code == 0
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "featcache", *_cli_extract_args(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    store = ShardStore(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if store.dir.exists() and len(store.done()) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "extraction finished before it could be killed; make the data larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = store.done()
    assert 3 <= len(done) < store.num_chunks()
    with pytest.raises(CacheError, match="interrupted"):
        open_cache(out)
    # a different argument is refused while the unfinished extraction exists
    res = CliRunner().invoke(main, _cli_extract_args(out, ("--tte",)))
    assert res.exit_code == 2 and "different arguments" in res.output
    res = CliRunner().invoke(main, _cli_extract_args(out))
    assert res.exit_code == 0, res.output
    assert f"resumed after {len(done)} finished chunk" in res.output
    a, b = open_cache(ref), open_cache(out)
    assert a.ids == b.ids and a.fingerprint == b.fingerprint
    assert torch.equal(a.features(), b.features()) and torch.equal(a.features(kind="cls"), b.features(kind="cls"))
    assert not store.dir.exists()


def test_existing_cache_with_other_arguments_is_refused(tmp_path: Path) -> None:
    out = _extract(tmp_path)
    with pytest.raises(CacheError, match="different arguments"):
        _extract(tmp_path, tte=True)
    assert open_cache(out).views == ["standard"]  # nothing was lost
    again = run(ExtractConfig(dataset="synthetic-lt", out=str(out), workers=0, progress=False))
    assert again.already_complete
    _extract(tmp_path, tte=True, overwrite=True)
    assert open_cache(out).views == ["standard", *TTE_VIEWS]


def test_reader_refuses_incomplete_file(tmp_path: Path) -> None:
    out = _extract(tmp_path)
    with h5py.File(out, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match=f"{out.name} is incomplete"):
        open_cache(out)
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        open_cache(tmp_path / "junk.h5")


def test_bad_images_stop_extraction_or_are_recorded(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"a": 3, "b": 3})
    (root / "a" / "a_1.png").write_bytes(b"")  # zero bytes
    good = (root / "b" / "b_0.png").read_bytes()
    (root / "b" / "b_2.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="a_1.png"):
        _extract(tmp_path, dataset="folder", root=str(root))
    out = _extract(tmp_path, dataset="folder", root=str(root), skip_bad=True)
    cache = open_cache(out)
    assert len(cache) == 4
    assert sorted(Path(s["source"]).name for s in cache.skipped) == ["a_1.png", "b_2.png"]
    assert any("empty" in s["reason"] for s in cache.skipped)
    res = CliRunner().invoke(main, ["info", str(out)])
    assert res.exit_code == 0 and "2 skipped image(s)" in res.output and "b_2.png" in res.output


def test_chunks_finished_before_a_bad_image_are_kept(tmp_path: Path) -> None:
    """Shards are written in the background; an error still leaves every finished chunk on disk."""
    root = _folder(tmp_path / "imgs", {"a": 3, "b": 3})
    good = (root / "b" / "b_0.png").read_bytes()
    (root / "b" / "b_2.png").write_bytes(good[: len(good) // 2])  # the last row: chunk 2
    with pytest.raises(DataError, match="b_2.png"):
        _extract(tmp_path, dataset="folder", root=str(root), chunk_size=2, batch_size=1)
    assert ShardStore(tmp_path / "c.h5").done() == {0, 1}
    cache = open_cache(_extract(tmp_path, dataset="folder", root=str(root), chunk_size=2, batch_size=1, skip_bad=True))
    assert len(cache) == 5


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["extract", "--dataset", "folder", "--root", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthtic-lt"])
    assert res.exit_code == 2 and "Did you mean 'synthetic-lt'?" in res.output
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic-lt", "--model", "ViT-B-61"])
    assert res.exit_code == 2 and "Did you mean 'ViT-B-16'?" in res.output
    res = CliRunner().invoke(main, ["info", str(tmp_path / "none.h5")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_weights_errors_name_model_and_tag(tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="Weights file .*nope.bin for model 'ViT-B-16' does not exist"):
        load_backbone("ViT-B-16", str(tmp_path / "nope.bin"))
    with pytest.raises(FeatcacheError, match="no pretrained tag 'opnai'.*Did you mean 'openai'"):
        load_backbone("ViT-B-16", "opnai")


def test_local_checkpoint_file_is_loaded_and_hashed(tmp_path: Path) -> None:
    a = load_backbone("tiny-clip")
    for p in a.model.parameters():
        p.data.add_(1.0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(a.model.state_dict(), ckpt)
    b = load_backbone("tiny-clip", str(ckpt))
    assert b.weights_id.startswith("sha256:")
    torch.testing.assert_close(b.model.visual.proj, a.model.visual.proj)


def test_cli_extract_and_info(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic-lt", "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"Wrote cache {out}" in res.output and "img/s" in res.output
    res = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert res.exit_code == 0
    import json

    info = json.loads(res.output)
    assert info["model"] == "tiny-clip" and info["views"] == ["standard"]
    assert sum(info["counts"]["train"]) + sum(info["counts"]["test"]) == info["images"]


def _header(n: int, d: int, desc: Descriptor, views: list[str]) -> CacheHeader:
    return CacheHeader(
        descriptor=desc, ids=[str(i) for i in range(n)], labels=np.arange(n) % desc.num_classes,
        splits=["train"] * n, sources=[str(i) for i in range(n)], meta={}, fingerprint="f",
        model_fingerprint="m", views=views,
    )


def test_write_cache_blocks_and_skips(tmp_path: Path) -> None:
    desc = Descriptor(name="t", class_ids=("a", "b"), class_names=("a", "b"))
    feats = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    blocks = iter([(np.arange(0, 5), {"standard": {"embed": feats[:5], "cls": feats[:5]}}),
                   (np.arange(5, 10), {"standard": {"embed": feats[5:], "cls": feats[5:]}})])
    write_cache(tmp_path / "w.h5", _header(10, 4, desc, ["standard"]), blocks, skipped=[(3, "bad"), (7, "bad")])
    c = open_cache(tmp_path / "w.h5")
    keep = [i for i in range(10) if i not in (3, 7)]
    assert c.ids == [str(i) for i in keep]
    np.testing.assert_array_equal(c.features().numpy(), feats[keep])


def test_import_features_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 30, 8
    feats = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.array(["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"] * 5)[:n]
    split = np.array(["train"] * 20 + ["test"] * 10)
    src = tmp_path / "f.npz"
    np.savez(src, features=feats, labels=labels, split=split, ids=np.array([f"img{i}" for i in range(n)]))
    out = import_run(ImportConfig(source=str(src), dataset="isic2018", out=str(tmp_path / "f.h5")))
    c = open_cache(out)
    assert c.descriptor.name == "isic2018" and c.ids[0] == "img0"
    assert [c.descriptor.class_ids[y] for y in c.labels[:3]] == ["NV", "MEL", "BKL"]
    np.testing.assert_array_equal(c.features().numpy(), feats)
    assert list(c.splits[:20]) == ["train"] * 20 and c.text_features is None
    # integer labels + class names in the file's own order, multi-view, parquet
    names = np.array(["df", "vasc", "akiec", "bcc", "bkl", "mel", "nv"])
    multi = rng.normal(size=(n, 6, d)).astype(np.float32)
    np.savez(tmp_path / "g.npz", features=multi, labels=np.arange(n) % 7, class_names=names,
             text_features=rng.normal(size=(7, d)).astype(np.float32))
    c = open_cache(import_run(ImportConfig(source=str(tmp_path / "g.npz"), dataset="isic2018")))
    assert c.views == ["standard", *TTE_VIEWS] and c.descriptor.class_ids[c.labels[0]] == "DF"
    np.testing.assert_allclose(c.features("tte_br").numpy(), multi[:, 5])
    assert c.text_features.shape == (1, 7, d)
    import polars as pl

    pl.DataFrame({"features": feats.tolist(), "labels": np.arange(n) % 3}).write_parquet(tmp_path / "h.parquet")
    c = open_cache(import_run(ImportConfig(source=str(tmp_path / "h.parquet"))))
    assert c.num_classes == 3 and len(c) == n
    np.testing.assert_allclose(c.features().numpy(), feats)


def test_import_features_bad_input(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((3, 4)), labels=np.array(["nv", "xx", "df"]))
    with pytest.raises(DataError, match="Unknown class 'xx'.*row 1"):
        import_run(ImportConfig(source=str(tmp_path / "a.npz"), dataset="isic2018"))
    np.savez(tmp_path / "b.npz", features=np.zeros((3, 4)))
    with pytest.raises(DataError, match="no 'labels'"):
        import_run(ImportConfig(source=str(tmp_path / "b.npz")))
    with pytest.raises(DataError, match="does not exist"):
        import_run(ImportConfig(source=str(tmp_path / "c.npz")))


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(tmp_path: Path) -> None:
    one = _extract(tmp_path, "one.h5", chunk_size=50, batch_size=25)
    two = tmp_path / "two.h5"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "featcache", "extract",
           "--dataset", "synthetic-lt", "--workers", "0", "--chunk-size", "50", "--batch-size", "25",
           "--out", str(two)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = open_cache(one), open_cache(two)
    assert a.ids == b.ids and a.fingerprint == b.fingerprint
    torch.testing.assert_close(a.features(), b.features())
    torch.testing.assert_close(a.features(kind="cls"), b.features(kind="cls"))


@pytest.mark.slow
def test_two_node_torchrun_equals_one_process(tmp_path: Path) -> None:
    """Multi-node: two torchrun launches (node ranks 0 and 1, one process each, a static
    rendezvous on localhost) share a folder as nodes share a file system; one cache results,
    and a second launch of the same pair finds it complete."""
    import socket

    one = _extract(tmp_path, "one.h5", chunk_size=40, batch_size=20, tte=True)
    two = tmp_path / "two.h5"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch() -> list[subprocess.CompletedProcess]:
        procs = [
            subprocess.Popen(
                [str(torchrun), "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
                 "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "featcache", "extract",
                 "--dataset", "synthetic-lt", "--tte", "--workers", "0", "--chunk-size", "40",
                 "--batch-size", "20", "--out", str(two)],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for node in (0, 1)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
        return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]

    for rc, _, err in launch():
        assert rc == 0, err[-3000:]
    a, b = open_cache(one), open_cache(two)
    assert a.ids == b.ids and a.fingerprint == b.fingerprint and b.views == a.views
    for view in a.views:
        torch.testing.assert_close(a.features(view), b.features(view))
    results = launch()
    assert all(rc == 0 for rc, _, _ in results)
    assert "already complete" in results[0][1]
