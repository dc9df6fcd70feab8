"""The package installs as one namespace, ``featcache``, and the client's layout still holds.

``heads/`` and ``pipelines/`` stay at the repository root (the client's layout) and are
installed and imported as ``featcache.heads`` and ``featcache.pipelines``; data/ descriptors
travel inside the wheel. Neither a wheel nor an editable install exposes any other top-level
name (``heads``, ``pipelines``, ``tests``, ``benchmarks``, ``data`` would collide with a user's
own folders).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OTHER_NAMES = ("heads", "pipelines", "tests", "benchmarks", "data")


def _probe(site: Path, cwd: Path) -> dict[str, str]:
    """Import featcache and the names that must not be there, from `site` only."""
    code = (
        # Drop every path entry that already holds a featcache (this checkout's own install),
        # then add `site` as a site directory (its .pth files run, as in a real environment).
        "import importlib, os, site, sys;"
        "sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or '.', 'featcache', '__init__.py'))];"
        "site.addsitedir(sys.argv[1]);"
        "import featcache.heads, featcache.pipelines.train_head as t;"
        "from featcache.datasets import load_descriptor; from featcache.datasets.base import data_dir;"
        "print('featcache', featcache.__file__); print('heads', featcache.heads.HEADS.names()[0]);"
        "print('data_dir', data_dir()); print('dtype', load_descriptor('isic2018').data_type);"
        f"names = {OTHER_NAMES!r}\n"
        "for n in names:\n"
        "    try: importlib.import_module(n); print(n, 'IMPORTABLE')\n"
        "    except ImportError: print(n, 'absent')\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code, str(site)], cwd=cwd,
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def _wheel_names(wheel: Path) -> list[str]:
    """The wheel's file list, with the layout every wheel of featcache must have."""
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"featcache", wheel.name.split("-py")[0] + ".dist-info"}
    assert "featcache/data/datasets/isic2018.json" in names
    assert "featcache/model_configs/tiny-clip.json" in names
    assert "featcache/templates/report.html.j2" in names  # featcache report --html
    assert "featcache/heads/base.py" in names and "featcache/pipelines/train_head.py" in names
    return names


def test_wheel_has_one_top_level_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build backend's own hook, in process (what ``pip wheel`` calls): the fast check."""
    pytest.importorskip("hatchling")
    from hatchling.build import build_wheel

    monkeypatch.chdir(REPO)  # a PEP 517 hook builds the project in the working directory
    _wheel_names(tmp_path / build_wheel(str(tmp_path)))


@pytest.mark.slow
def test_wheel_installs_featcache_and_nothing_else(tmp_path: Path) -> None:
    """``pip wheel``, unpacked as a site directory, imported by a fresh interpreter."""
    pytest.importorskip("hatchling")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("featcache-*.whl"))
    _wheel_names(wheel)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    seen = _probe(site, tmp_path)
    assert seen["featcache"] == str(site / "featcache" / "__init__.py")
    assert seen["data_dir"] == str(site / "featcache" / "data") and seen["dtype"] == "dermoscopy"
    assert all(seen[n] == "absent" for n in OTHER_NAMES), seen


@pytest.mark.slow  # builds, then imports torch in a fresh interpreter
def test_editable_install_exposes_only_featcache(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    pytest.importorskip("editables")
    code = ("import sys; from hatchling.build import build_editable;"
            "print(build_editable(sys.argv[1]))")
    name = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                          check=True, capture_output=True, text=True).stdout.split()[-1]
    site = tmp_path / "site"
    zipfile.ZipFile(tmp_path / name).extractall(site)
    # The editables redirector the .pth file loads lives in the test environment's site-packages.
    import editables
    seen = _probe(site, tmp_path)
    assert Path(editables.__file__).exists()
    assert seen["featcache"] == str(REPO / "featcache" / "__init__.py")
    assert seen["dtype"] == "dermoscopy"
    assert all(seen[n] == "absent" for n in OTHER_NAMES), seen
