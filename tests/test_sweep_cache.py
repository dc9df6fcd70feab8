"""Hostile input and faults around the cache and extraction (issue 17), as a table.

Each row is ``(case id, builder, args, fragment)``: ``builder(tmp)`` lays out the input in a
fresh folder and returns the placeholders used in ``args`` (``{cache}``, ``{out}``, ...); the
command must exit non-zero with ``fragment`` in its output, print no traceback, and leave every
file that existed before it byte-identical. The same shape as tests/test_sweep.py, so the two
tables can be merged. Faults that need a second process, a monkeypatched write or a check of
what was written afterwards (locks, a full disk, ``--overwrite``, planted symlinks, resumes)
are tests below the table.
"""

from __future__ import annotations

import atexit
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from fixtures_data import write_folder, write_isic_official
from PIL import Image

from featcache.cache import CacheWriteError, OutputLock, ShardStore, open_cache
from featcache.cli import main
from featcache.datasets.base import decode_rgb
from featcache.errors import CacheError, DataError
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


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")
    }


@pytest.mark.parametrize(("case", "build", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_sweep_cache(tmp_path: Path, case: str, build: Callable[[Path], dict], args: list[str], fragment: str) -> None:
    ctx = build(tmp_path)
    try:
        before = _snapshot(tmp_path)
        argv = [a.format(**ctx) for a in args]
        res = CliRunner().invoke(main, argv)
        after = _snapshot(tmp_path)
    finally:
        while _HELD:
            _HELD.pop().release()
    assert res.exit_code != 0, f"{case}: exit 0\n{res.output}"
    assert isinstance(res.exception, SystemExit), f"{case}: {res.exception!r} escaped\n{res.output}"
    assert "Traceback" not in res.output
    assert fragment.format(**ctx) in res.output, f"{case}: {fragment!r} not in\n{res.output}"
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"{case}: earlier files changed or lost: {changed}"


# --------------------------------------------------------------------------------------
# faults that need more than one command


def _run_folder(root: Path, out: Path, **kw) -> Path:
    kw.setdefault("chunk_size", 2)
    kw.setdefault("batch_size", 1)
    return run(ExtractConfig(dataset="folder", root=str(root), out=str(out), workers=0, progress=False, **kw)).out


def test_full_disk_while_writing_shards_keeps_finished_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path)
    out = tmp_path / "c.h5"
    real = np.savez
    calls = []

    def savez(file, **arrays):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 3:
            if hasattr(file, "write"):
                file.write(b"partial")  # a half-written temporary file must not survive
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(CacheWriteError) as e:
        _run_folder(root, out)
    msg = str(e.value)
    assert "chunk-000002.npz" in msg and "No space left on device" in msg and "free disk space" in msg
    assert "run the same command again" in msg
    store = ShardStore(out)
    assert store.done() == {0, 1}
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".")], "a temporary file was left"
    for k in (0, 1):
        assert store.load(k)["standard/embed"].shape[0] == 2  # finished shards intact
    monkeypatch.setattr(np, "savez", real)
    res = run(ExtractConfig(dataset="folder", root=str(root), out=str(out), workers=0, batch_size=1, chunk_size=2, progress=False))
    assert res.resumed_chunks == 2 and len(open_cache(out)) == 6


def test_full_disk_during_assembly_keeps_old_cache_and_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite replaces the old cache only at the final rename: a failed rerun loses nothing."""
    root = _folder(tmp_path)
    out = _run_folder(root, tmp_path / "c.h5")
    old = out.read_bytes()

    def full(self, key, value):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    with pytest.raises(CacheWriteError) as e:
        _run_folder(root, out, tte=True, overwrite=True)
    msg = str(e.value)
    assert str(out) in msg and "free disk space" in msg and "finished chunks are kept in" in msg
    assert out.read_bytes() == old  # the old complete cache is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "c.h5.partial", "imgs"]  # no temp file
    assert ShardStore(out).done() == {0, 1, 2}
    monkeypatch.undo()
    res = run(ExtractConfig(dataset="folder", root=str(root), out=str(out), workers=0, batch_size=1, chunk_size=2,
                            tte=True, overwrite=True, progress=False))
    assert res.resumed_chunks == 3 and res.num_encoded == 0
    assert "tte_c" in open_cache(out).views


def test_failed_overwrite_keeps_old_cache(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    out = _run_folder(root, tmp_path / "c.h5")
    old = out.read_bytes()
    (root / "a" / "a_0.png").write_bytes(b"")  # the rerun stops on a bad image
    with pytest.raises(DataError, match="a_0.png"):
        _run_folder(root, out, tte=True, overwrite=True)
    assert out.read_bytes() == old


def test_symlink_planted_at_tmp_is_not_followed(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "c.h5"
    for name in ("c.h5.tmp", ".c.h5.tmp"):
        (tmp_path / name).symlink_to(victim)
    store = ShardStore(out)
    store.dir.mkdir()
    (store.dir / ".state.json.tmp").symlink_to(victim)
    _run_folder(root, out)
    assert victim.read_text() == "precious"
    assert len(open_cache(out)) == 6


def test_resume_accepts_same_folder_as_absolute_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _partial(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, _ext_args("imgs", ctx["out"]))  # relative spelling of the same root
    assert res.exit_code == 0, res.output
    assert "resumed after 2 finished chunk" in res.output


def test_out_in_read_only_folder_is_refused_before_work(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic-lt", "--out", str(ro / "c.h5")])
    finally:
        ro.chmod(0o755)
    assert res.exit_code == 2 and "is not writable" in res.output


def test_unwritable_folder_is_refused_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself (root passes os.access everywhere, so the folder's answer is faked)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real(p, mode, **kw))
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic-lt", "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 2 and "is not writable" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_lock_names_holder_and_is_released(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    with OutputLock(out), pytest.raises(CacheError, match=f"process {os.getpid()} on"):
        OutputLock(out).acquire()
    assert not (tmp_path / "c.h5.lock").exists()
    OutputLock(out).acquire().release()


@pytest.mark.slow
def test_two_extractions_at_once_one_is_refused_and_cache_is_whole(tmp_path: Path) -> None:
    """Two processes into one --out: while the first holds the output (it is paused with
    SIGSTOP once its lock names it, so the overlap does not depend on the machine's speed),
    the second is refused naming the first's process; the first then finishes a correct cache."""
    out = tmp_path / "c.h5"
    args = ["extract", "--dataset", "synthetic-lt", "--option", "max_per_class=400", "--workers", "0",
            "--batch-size", "16", "--chunk-size", "64", "--out", str(out)]
    ref = tmp_path / "ref.h5"
    assert CliRunner().invoke(main, [*args[:-1], str(ref)]).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "featcache", *args]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
    lock = Path(str(out) + ".lock")
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().startswith(str(first.pid))):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    assert second.returncode == 2, second.stderr
    assert f"process {first.pid} on" in second.stderr and "Traceback" not in second.stderr
    a, b = open_cache(ref), open_cache(out)
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.features().numpy(), b.features().numpy())


def test_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    code = f"from featcache.cache import OutputLock; OutputLock({str(out)!r}).acquire(); import time; print('held', flush=True); time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"held"
    with pytest.raises(CacheError, match=f"process {proc.pid} on"):
        OutputLock(out).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    OutputLock(out).acquire().release()  # the kernel dropped the dead process's lock


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode.startswith("I")  # PIL opens 16-bit grey as I or I;16
    rgb = np.asarray(decode_rgb(buf.getvalue(), "ramp.png"))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert rgb.shape == (64, 64, 3)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb == 255).mean() < 0.01  # clipping made ~all pixels white


def test_import_one_hot_and_column_labels_become_indices(tmp_path: Path) -> None:
    from featcache.pipelines.import_features import ImportConfig
    from featcache.pipelines.import_features import run as import_run

    np.savez(tmp_path / "a.npz", features=_F, labels=np.eye(3, dtype=np.float32)[_L])
    c = open_cache(import_run(ImportConfig(source=str(tmp_path / "a.npz"))))
    assert c.labels.ndim == 1 and c.labels.tolist() == _L.tolist() and c.num_classes == 3
    np.savez(tmp_path / "b.npz", features=_F, labels=_L[:, None])
    c = open_cache(import_run(ImportConfig(source=str(tmp_path / "b.npz"))))
    assert c.labels.ndim == 1 and c.labels.tolist() == _L.tolist()
    # string labels follow the file's class_names order, not the sorted order
    np.savez(tmp_path / "s.npz", features=_F, labels=np.array(["z", "a", "m"] * 2), class_names=np.array(["z", "a", "m"]))
    c = open_cache(import_run(ImportConfig(source=str(tmp_path / "s.npz"))))
    assert c.class_names == ["z", "a", "m"] and c.labels.tolist() == [0, 1, 2] * 2


def test_non_finite_features_are_refused_when_written(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="img000004 .*not finite"):
        from featcache.cache import CacheHeader, write_cache
        from featcache.datasets.base import Descriptor

        desc = Descriptor(name="t", class_ids=("a", "b"), class_names=("a", "b"))
        f = np.ones((6, 4), np.float32)
        f[4, 0] = np.nan
        header = CacheHeader(descriptor=desc, ids=[f"img{i:06d}" for i in range(6)], labels=np.arange(6) % 2,
                             splits=[""] * 6, sources=[str(i) for i in range(6)], meta={}, fingerprint="f",
                             model_fingerprint="m", views=["standard"])
        write_cache(tmp_path / "w.h5", header, iter([(np.arange(6), {"standard": {"embed": f, "cls": f}})]))
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_meta_json_round_trip_sanity(tmp_path: Path) -> None:
    """The layout check accepts every cache the fixtures and extraction write."""
    c = open_cache(_cache(tmp_path))
    assert json.loads(json.dumps(c.meta))["views"] == ["standard"]
