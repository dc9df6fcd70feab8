"""The cache and extraction rows of the hostile-input sweep (issue 17).

Each row is ``(case id, builder, args, fragment)``: ``builder(tmp)`` lays out the input in a
fresh folder and returns the placeholders used in ``args`` and ``fragment`` (``{cache}``,
``{out}``, ``{pid}``, ...). The rows run in tests/test_sweep.py with the other cases, through
the one check every case shares. Faults that need a second process, a monkeypatched write or
a check of what was written afterwards are in tests/test_sweep_cache.py.
"""


from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from fixtures_data import write_folder, write_isic_official
from PIL import Image

from featcache.cache import OutputLock, ShardStore
from featcache.cli import main
from featcache.errors import DataError
from featcache.pipelines.extract import ExtractConfig, run

REPO = Path(__file__).resolve().parents[1]
_HELD: list[OutputLock] = []  # locks a builder holds for the duration of its case


# --------------------------------------------------------------------------------------
# builders


def _cache(tmp: Path, **kw) -> Path:
    return make_feature_cache(tmp / "c.h5", num_classes=3, counts=[30, 20, 10], dim=8, split_mode="official", **kw)


def _edit_cache(edit: Callable[[h5py.File], None]) -> Callable[[Path], dict]:
    def build(tmp: Path) -> dict:
        path = _cache(tmp)
        with h5py.File(path, "r+") as f:
            edit(f)
        return {"cache": str(path), "tmp": str(tmp)}

    return build


def _del(key: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        if key.startswith("@"):
            del f.attrs[key[1:]]
        else:
            del f[key]

    return edit


def _set_meta(text: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs["meta"] = text

    return edit


def _short_labels(f: h5py.File) -> None:
    labels = f["images/labels"][()]
    del f["images/labels"]
    f["images/labels"] = labels[:-5]


def _label_out_of_range(f: h5py.File) -> None:
    f["images/labels"][7] = 3  # 3 classes: 0..2


def _nan_feature(f: h5py.File) -> None:
    f["views/standard/embed"][4, 2] = np.nan


_TRAINED: dict[str, Path] = {}


def _trained_run(tmp: Path) -> Path:
    """A train-head run on a good cache (trained once per session, copied into ``tmp``)."""
    if "run" not in _TRAINED:
        base = Path(tempfile.mkdtemp(prefix="featcache-sweep-run-"))
        atexit.register(shutil.rmtree, base, True)
        cache = _cache(base)
        res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--head", "linear", "--epochs", "1",
                                        "--seeds", "0", "--device", "cpu", "--out", str(base / "run")])
        assert res.exit_code == 0, res.output
        _TRAINED["run"] = base / "run"
    shutil.copytree(_TRAINED["run"], tmp / "run")
    return tmp / "run"


def _predict_on(edit: Callable[[h5py.File], None]) -> Callable[[Path], dict]:
    def build(tmp: Path) -> dict:
        run_dir = _trained_run(tmp)
        ctx = _edit_cache(edit)(tmp)
        return {**ctx, "run": str(run_dir)}

    return build


def _npz(**arrays: object) -> Callable[[Path], dict]:
    def build(tmp: Path) -> dict:
        np.savez(tmp / "f.npz", **arrays)
        return {"src": str(tmp / "f.npz"), "out": str(tmp / "f.h5")}

    return build


def _ragged_parquet(tmp: Path) -> dict:
    import polars as pl

    pl.DataFrame({"features": [[0.1, 0.2], [0.3], [0.4, 0.5]], "labels": [0, 1, 0]}).write_parquet(tmp / "f.parquet")
    return {"src": str(tmp / "f.parquet"), "out": str(tmp / "f.h5")}


_F = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
_L = np.array([0, 1, 2, 0, 1, 2])


def _nan_features() -> np.ndarray:
    f = _F.copy()
    f[3, 1] = np.inf
    return f


def _folder(tmp: Path) -> Path:
    return write_folder(tmp / "imgs", {"a": 3, "b": 3})


def _ext_args(root: str, out: str, *extra: str) -> list[str]:
    return ["extract", "--dataset", "folder", "--root", root, "--workers", "0", "--batch-size", "1",
            "--chunk-size", "2", "--out", out, *extra]


def _partial(tmp: Path) -> dict:
    """An interrupted extraction: chunks 0 and 1 done, chunk 2 stopped by a bad image (now repaired)."""
    root = _folder(tmp)
    bad = root / "b" / "b_2.png"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    out = tmp / "c.h5"
    with pytest.raises(DataError):
        run(ExtractConfig(dataset="folder", root=str(root), out=str(out), workers=0, batch_size=1, chunk_size=2, progress=False))
    bad.write_bytes(good)
    assert ShardStore(out).done() == {0, 1}
    return {"root": str(root), "out": str(out), "tmp": str(tmp)}


def _partial_then(edit: Callable[[Path, ShardStore], None]) -> Callable[[Path], dict]:
    def build(tmp: Path) -> dict:
        ctx = _partial(tmp)
        edit(Path(ctx["root"]), ShardStore(Path(ctx["out"])))
        return ctx

    return build


def _zero_shard(root: Path, store: ShardStore) -> None:
    store.path(0).write_bytes(b"")


def _wrong_shape_shard(root: Path, store: ShardStore) -> None:
    z = store.load(1)
    z["standard/embed"] = z["standard/embed"][:, :3]
    with open(store.path(1), "wb") as f:
        np.savez(f, **z)


def _bad_state(root: Path, store: ShardStore) -> None:
    (store.dir / "state.json").write_text('{"fingerprint": ')


def _changed_image(root: Path, store: ShardStore) -> None:
    first = sorted((root / "a").iterdir())[0]  # row 0: chunk 0
    Image.new("RGB", (20, 20), (9, 9, 9)).save(first)
    os.utime(first, ns=(1, 1))


def _fifo_image(tmp: Path) -> dict:
    root = _folder(tmp)
    os.mkfifo(root / "a" / "zz_fifo.png")
    return {"root": str(root), "out": str(tmp / "c.h5")}


def _huge_jpeg(tmp: Path) -> dict:
    """A JPEG whose header claims 65000 x 65000 pixels (its SOF0 size bytes patched)."""
    root = tmp / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / name / f"{name}_{i}.jpg", "JPEG")
    path = root / "a" / "a_1.jpg"
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return {"root": str(root), "out": str(tmp / "c.h5")}


def _soft_isic(tmp: Path) -> dict:
    root = write_isic_official(tmp / "isic")
    csv = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    lines[1] = ",".join([lines[1].split(",")[0], "0.6", "0.4", "0.0", "0.0", "0.0", "0.0", "0.0"])  # soft
    lines[2] = ",".join([lines[2].split(",")[0], "2.0", "-1.0", "0.0", "0.0", "0.0", "0.0", "0.0"])  # negative
    csv.write_text("\n".join(lines) + "\n")
    return {"root": str(root), "out": str(tmp / "c.h5")}


def _out_is_dir(tmp: Path) -> dict:
    (tmp / "outdir").mkdir()
    return {"out": str(tmp / "outdir")}


def _parent_is_file(tmp: Path) -> dict:
    (tmp / "afile").write_text("x")
    return {"out": str(tmp / "afile" / "c.h5")}


def _locked(tmp: Path) -> dict:
    out = tmp / "c.h5"
    _HELD.append(OutputLock(out).acquire())
    return {"out": str(out), "pid": str(os.getpid())}


CASES: list[tuple[str, Callable[[Path], dict], list[str], str]] = [
    # the cache contract, checked on open by info, train-head and predict (validate_cache)
    ("info-no-embed", _edit_cache(_del("views/standard/embed")), ["info", "{cache}"], "/views/standard/embed is missing"),
    ("info-no-meta", _edit_cache(_del("@meta")), ["info", "{cache}"], "attribute 'meta' is missing"),
    ("info-meta-not-json", _edit_cache(_set_meta("{not json")), ["info", "{cache}"], "'meta' is not JSON"),
    ("info-meta-no-views", _edit_cache(_set_meta('{"descriptor": {}}')), ["info", "{cache}"], "names no views"),
    ("info-labels-short", _edit_cache(_short_labels), ["info", "{cache}"], "/images/labels has 55 rows but /images/ids has 60"),
    ("info-label-range", _edit_cache(_label_out_of_range), ["info", "{cache}"], "label 3 of row 7 lies outside the 3 classes"),
    ("info-no-ids", _edit_cache(_del("images/ids")), ["info", "{cache}"], "/images/ids is missing"),
    ("info-no-fingerprint", _edit_cache(_del("@fingerprint")), ["info", "{cache}"], "attribute 'fingerprint' is missing"),
    ("train-no-embed", _edit_cache(_del("views/standard/embed")),
     ["train-head", "--cache", "{cache}", "--epochs", "1", "--seeds", "0", "--out", "{tmp}/run"], "/views/standard/embed is missing"),
    ("train-label-range", _edit_cache(_label_out_of_range),
     ["train-head", "--cache", "{cache}", "--epochs", "1", "--seeds", "0", "--out", "{tmp}/run"], "outside the 3 classes"),
    ("train-nan-feature", _edit_cache(_nan_feature),
     ["train-head", "--cache", "{cache}", "--epochs", "1", "--seeds", "0", "--out", "{tmp}/run"], "non-finite value (NaN or inf) in row 4"),
    ("predict-no-meta", _predict_on(_del("@meta")),
     ["predict", "--run", "{run}", "--cache", "{cache}", "--out", "{tmp}/pred"], "attribute 'meta' is missing"),
    ("predict-labels-short", _predict_on(_short_labels),
     ["predict", "--run", "{run}", "--cache", "{cache}", "--out", "{tmp}/pred"], "has 55 rows"),
    # import-features: nothing unpickled, nothing malformed written
    ("import-object-array", _npz(features=np.array([[1.0, 2.0], [3.0]], dtype=object), labels=np.array([0, 1])),
     ["import-features", "{src}", "--out", "{out}"], "without unpickling"),
    ("import-empty", _npz(features=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64)),
     ["import-features", "{src}", "--out", "{out}"], "has no rows"),
    ("import-zero-dim", _npz(features=np.zeros((3, 0), np.float32), labels=np.arange(3)),
     ["import-features", "{src}", "--out", "{out}"], "zero-dimensional"),
    ("import-scalar", _npz(features=np.float32(1.0), labels=np.arange(1)),
     ["import-features", "{src}", "--out", "{out}"], "must be [N, D] or [N, V, D]"),
    ("import-string-features", _npz(features=np.array([["a", "b"], ["c", "d"]]), labels=np.arange(2)),
     ["import-features", "{src}", "--out", "{out}"], "expected numbers"),
    ("import-ragged", _ragged_parquet, ["import-features", "{src}", "--out", "{out}"], "is ragged"),
    ("import-nonfinite", _npz(features=_nan_features(), labels=_L),
     ["import-features", "{src}", "--out", "{out}"], "row 3 are not finite"),
    ("import-dup-classes", _npz(features=_F, labels=_L, class_names=np.array(["x", "y", "x"])),
     ["import-features", "{src}", "--out", "{out}"], "lists 'x' twice"),
    ("import-soft-onehot", _npz(features=_F, labels=np.tile([[0.7, 0.3, 0.0]], (6, 1))),
     ["import-features", "{src}", "--out", "{out}"], "soft or negative labels"),
    ("import-negative-onehot", _npz(features=_F, labels=np.tile([[1, 1, -1]], (6, 1))),
     ["import-features", "{src}", "--out", "{out}"], "row 0 ([1, 1, -1]) is not 0/1"),
    ("import-multihot-single-label", _npz(features=_F, labels=np.tile([[1, 1, 0]], (6, 1))),
     ["import-features", "{src}", "--out", "{out}"], "row 0 has 2 positive classes"),
    ("import-negative-label", _npz(features=_F, labels=np.array([0, 1, -2, 0, 1, 2])),
     ["import-features", "{src}", "--out", "{out}"], "label -2 of row 2 is negative"),
    ("import-fractional-label", _npz(features=_F, labels=np.array([0, 1, 1.5, 0, 1, 2])),
     ["import-features", "{src}", "--out", "{out}"], "not a whole number"),
    ("import-labels-3d", _npz(features=_F, labels=np.zeros((6, 2, 2))),
     ["import-features", "{src}", "--out", "{out}"], "'labels' must be [N]"),
    ("import-ids-length", _npz(features=_F, labels=_L, ids=np.array(["a", "b"])),
     ["import-features", "{src}", "--out", "{out}"], "'ids' has 2 entries for 6"),
    # extraction: checked before work starts, damaged state named, resumes refused when unsafe
    ("extract-out-is-dir", _out_is_dir, ["extract", "--dataset", "synthetic-lt", "--workers", "0", "--out", "{out}"], "is a folder"),
    ("extract-out-parent-is-file", _parent_is_file, ["extract", "--dataset", "synthetic-lt", "--workers", "0", "--out", "{out}"], "Cannot create the folder"),
    ("import-out-is-dir", lambda tmp: {**_npz(features=_F, labels=_L)(tmp), "out": str(tmp)}, ["import-features", "{src}", "--out", "{out}"], "is a folder"),
    ("extract-locked", _locked, ["extract", "--dataset", "synthetic-lt", "--workers", "0", "--out", "{out}"], "(process {pid} on"),
    ("extract-bad-state", _partial_then(_bad_state), _ext_args("{root}", "{out}"), "state.json of an unfinished extraction is damaged"),
    ("extract-zero-byte-shard", _partial_then(_zero_shard), _ext_args("{root}", "{out}"), "chunk-000000.npz of an unfinished extraction is damaged"),
    ("extract-wrong-shape-shard", _partial_then(_wrong_shape_shard), _ext_args("{root}", "{out}"), "chunk-000001.npz of an unfinished extraction is damaged"),
    ("extract-image-changed", _partial_then(_changed_image), _ext_args("{root}", "{out}"), "changed since it was encoded"),
    ("extract-other-args-named", _partial, _ext_args("{root}", "{out}", "--tte"), "preprocessing.tte False → True"),
    ("extract-fifo-image", _fifo_image, _ext_args("{root}", "{out}"), "is not a regular file"),
    ("extract-huge-jpeg-device", _huge_jpeg, _ext_args("{root}", "{out}", "--decoder", "device", "--device", "cpu"), "exceeds limit"),
    ("extract-isic-soft-labels", _soft_isic, ["extract", "--dataset", "isic2018", "--root", "{root}", "--workers", "0", "--out", "{out}"], "soft or negative labels"),
]


def release_held() -> None:
    """Release the locks a builder took for its case (``extract-locked``)."""
    while _HELD:
        _HELD.pop().release()
