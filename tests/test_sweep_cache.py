"""Faults around the cache and extraction that need more than one command (issue 17).

Locks held by a second process, a full disk (a monkeypatched write), ``--overwrite`` that
fails, planted symlinks, resumes with the root spelled another way. The single-command rows
of the same issue are in tests/sweep_cache_cases.py and run in tests/test_sweep.py.
"""


from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sweep_cache_cases import _F, _L, REPO, _cache, _ext_args, _folder, _partial

from featcache.cache import CacheWriteError, OutputLock, ShardStore, open_cache
from featcache.cli import main
from featcache.datasets.base import decode_rgb
from featcache.errors import CacheError, DataError
from featcache.pipelines.extract import ExtractConfig, run

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
