"""``featcache report``: which folders count, the columns, and the HTML page in a real browser.

Three tiny runs on a synthetic cache (a linear head, a cosine head with the logit-adjusted
loss in a folder whose name is HTML, a grid over lr × weight decay) feed every test. The
browser test drives the distribution's Chromium through its chromedriver with selenium
(nothing downloaded); it is skipped, saying why, where either is missing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_cache import make_feature_cache

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.report import collect_runs, reliability, report_frame, shots_figure, write_html
from featcache.runs import differing_knobs, read_run, run_knobs
from featcache.tables import fmt_number

HOSTILE = '<img src=x onerror="alert(1)">&$^$'  # a folder name that is HTML (and mathtext)
FAST = dict(epochs=2, seeds=(0, 1), device="cpu")


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from featcache.pipelines import grid, train_head

    root = tmp_path_factory.mktemp("report")
    cache = make_feature_cache(root / "cache.h5", num_classes=5, dim=8)
    base = dict(cache=str(cache), **FAST)
    runs = {"linear": root / "runs" / "lin", "cosine": root / "runs" / HOSTILE,
            "grid": root / "runs" / "grid"}
    train_head.run(train_head.TrainHeadConfig(head="linear", out=str(runs["linear"]), **base))
    train_head.run(train_head.TrainHeadConfig(head="cosine", loss="la", out=str(runs["cosine"]), **base))
    grid.run(grid.GridConfig(base=train_head.TrainHeadConfig(head="linear", val_fraction=0.2, **base),
                             params=(("lr", (0.01, 0.1)), ("weight_decay", (0.0, 5e-4))),
                             out=str(runs["grid"])))
    return runs


# --------------------------------------------------------------------------------------
# Which folders are runs


def test_non_runs_are_skipped_with_a_note(three_runs: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("x")
    paths = [str(three_runs["linear"]), str(empty), str(tmp_path / "notes.txt"),
             str(tmp_path / "missing"), str(three_runs["grid"])]
    found = collect_runs(paths)
    assert [Path(r["run"]) for r in found.runs] == [three_runs["linear"], three_runs["grid"]]
    assert dict(found.skipped) == {str(empty): "not a run directory (no metrics.json)",
                                   str(tmp_path / "notes.txt"): "not a folder",
                                   str(tmp_path / "missing"): "no such file or folder"}
    res = CliRunner().invoke(main, ["report", *paths])
    assert res.exit_code == 0, res.output
    assert f"note: skipped {empty}: not a run directory" in res.stderr
    assert "Read 2 run(s)" in res.stdout
    with pytest.raises(FeatcacheError, match="None of the 2 path"):
        collect_runs([str(empty), str(tmp_path / "missing")])


def test_damaged_run_is_still_an_error(three_runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(three_runs["linear"], run)
    (run / "metrics.json").write_text('{"acc": 0.5, "per_seed": [')
    with pytest.raises(FeatcacheError, match="metrics.json is not valid JSON"):
        collect_runs([str(three_runs["linear"]), str(run)])


def test_bench_folder_is_refused_before_any_table(three_runs: dict[str, Path], tmp_path: Path) -> None:
    from fixtures_data import write_medmnist

    from featcache.pipelines.bench_medmnist import BenchConfig, run

    root = tmp_path / "data"
    write_medmnist(root, "pneumoniamnist", num_classes=2, sizes=(12, 6, 8), seed=7)
    bench = tmp_path / "bench"
    run(BenchConfig(datasets=("pneumoniamnist",), root=str(root), backbones=("tiny-clip",), seeds=(0,),
                    input_size="model", out=str(bench), cache_dir=str(tmp_path / "c"), device="cpu",
                    progress=False, iterations=5, lrs=(1e-3,)))
    res = CliRunner().invoke(main, ["report", str(three_runs["linear"]), str(bench)])
    assert res.exit_code != 0
    assert f"{bench} is a `featcache bench medmnist` folder" in res.stderr and "table.md" in res.stderr
    assert "Many" not in res.stdout  # no table printed


@pytest.mark.slow
def test_reproduce_folder_is_skipped_and_its_rows_are_runs(tmp_path: Path) -> None:
    from featcache.pipelines.reproduce import ReproduceConfig, run

    cache = make_feature_cache(tmp_path / "c.h5", num_classes=4, dim=8)
    out, _ = run(ReproduceConfig(cache=str(cache), seeds=(0,), epochs=1, ensemble_epochs=1,
                                 baseline_epochs=1, device="cpu", out=str(tmp_path / "repro")))
    rows = sorted(str(p) for p in (Path(out) / "rows").iterdir())
    found = collect_runs([str(out), *rows[:2]])
    assert len(found.runs) == 2 and found.skipped[0][0] == str(out)
    assert "a `reproduce tfa-lt` folder (a table of runs)" in found.skipped[0][1]
    assert f"{Path(out) / 'rows'}/*" in found.skipped[0][1]


# --------------------------------------------------------------------------------------
# Columns


def test_knobs_that_differ_are_columns(three_runs: dict[str, Path]) -> None:
    runs = [read_run(three_runs[k]) for k in ("linear", "cosine", "grid")]
    knobs = differing_knobs(runs)
    assert {"head", "loss", "pipeline", "val_fraction", "weight_decay"} <= set(knobs)
    # where and when a run was made, and what every run shares, are not knobs
    assert not {"out", "device", "cache", "cache_fingerprint", "torch_version", "epochs", "seeds"} & set(knobs)
    grid_knobs = run_knobs(runs[2])
    selected = json.loads((three_runs["grid"] / "config.json").read_text())["selected_config"]
    assert grid_knobs["lr"] == fmt_number(selected["lr"])  # the grid's selected configuration
    assert run_knobs(runs[0])["weight_decay"] == "5e-4" and run_knobs(runs[0])["cache"] == "cache.h5"
    assert differing_knobs(runs[:1]) == []
    frame, cols = report_frame(runs)
    assert frame["head"].to_list() == ["linear", "cosine", "linear"]
    assert frame["name"].to_list() == ["lin", HOSTILE, "grid"]
    for key in ("balanced_acc", "auc"):
        doc = json.loads((three_runs["cosine"] / "metrics.json").read_text())
        assert frame[key][1] == pytest.approx(doc[key]) and frame[f"{key}_std"][1] == pytest.approx(doc[f"{key}_std"])


def test_report_cli_shows_balanced_accuracy_auc_ece_and_knobs(three_runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "table"
    paths = [str(three_runs[k]) for k in ("linear", "cosine", "grid")]
    res = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["report", *paths, "--out", str(out)])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if "Run" in line)
    for col in ("Bal.", "AUC", "ECE", "head", "loss", "weight_decay", "Many", "F1"):
        assert col in header, (col, header)
    md = (out.with_suffix(".md")).read_text().splitlines()
    assert md[0].startswith("| Run | ") and "| Bal. | AUC |" in md[0] and "| head |" in md[0]
    doc = json.loads((three_runs["linear"] / "metrics.json").read_text())
    assert f"{100 * doc['auc']:.2f} ± {100 * doc['auc_std']:.2f}" in md[2]
    assert "| AUC | ECE |" in md[0] and f"{100 * doc['ece']:.2f} ± {100 * doc['ece_std']:.2f}" in md[2]
    table = pl.read_parquet(out.with_suffix(".parquet"))
    assert {"balanced_acc", "auc", "head", "loss"} <= set(table.columns)
    # at 80 columns the knobs move below the table and no number is cut
    res = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["report", *paths])
    assert res.exit_code == 0, res.output
    assert "Settings that differ:" in res.stdout and "lin: " in res.stdout and "head=linear" in res.stdout
    # one line per run (a run name longer than the console allows makes that line longer)
    assert len([ln for ln in res.stdout.splitlines() if re.search(r"\d+\.\d\d", ln)]) == 3
    assert "…" not in res.stdout


# --------------------------------------------------------------------------------------
# The page


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def test_html_is_self_contained_escaped_and_complete(three_runs: dict[str, Path], tmp_path: Path) -> None:
    page = write_html(collect_runs([str(p) for p in three_runs.values()]), tmp_path / "r" / "report.html")
    html = page.read_text(encoding="utf-8")
    # no network: nothing is fetched from anywhere but the page itself
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "<link" not in html and "@import" not in html and "<script src" not in html
    # user text is escaped: the folder named as an <img> tag is text, not an element
    assert HOSTILE not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;$^$" in html
    # group bars (1), per run: per-class, confusion, reliability, loss curve (4 × 3), the grid's
    # heatmap (1)
    srcs = _images(html)
    assert len(srcs) == 14
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert html.count('<details class="config">') == 3
    assert '&#34;head&#34;: &#34;cosine&#34;' in html  # each run's full config.json
    assert html.count("<tbody>") == 1 and len(re.findall(r"<tr>", html)) == 4  # header + 3 runs
    res = CliRunner().invoke(main, ["report", str(three_runs["linear"]), "--html", str(tmp_path)])
    assert res.exit_code != 0 and f"--html {tmp_path} is a folder" in res.stderr


def test_class_names_come_from_the_cache_else_the_descriptor(three_runs: dict[str, Path], tmp_path: Path) -> None:
    from featcache.report import load_view

    view = load_view(read_run(three_runs["linear"]), "lin")
    assert view.class_names == [f"class {c}" for c in range(5)]
    assert view.train_counts is not None and view.train_counts.sum() > 0
    # a run whose cache is gone (or a finetune run, which has none): the shipped descriptor's
    # names when the class count matches, and no training counts
    run = tmp_path / "moved"
    shutil.copytree(three_runs["linear"], run)
    config = json.loads((run / "config.json").read_text())
    config.update(cache=str(tmp_path / "gone.h5"), dataset="aptos2019")
    (run / "config.json").write_text(json.dumps(config))
    view = load_view(read_run(run), "moved")
    assert view.class_names[0] == "no DR" and view.train_counts is None
    assert any("not readable here" in n for n in view.notes)


def test_reliability_follows_its_definition() -> None:
    # two rows sure (p ≈ 1) and right, two at p = 0.5 with one right: ECE = 0.5 · |0.5 − 0.5| + 0.5 · |1 − 1|
    big = 50.0
    scores = np.array([[big, 0.0], [0.0, big], [0.0, 0.0], [0.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    r = reliability(labels, scores, bins=10)
    assert r["count"].sum() == 4 and r["count"][4] == 2 and r["count"][9] == 2
    assert r["acc"][4] == 0.5 and r["acc"][9] == 1.0 and r["ece"] == pytest.approx(0.0, abs=1e-12)
    wrong = reliability(np.array([1, 0]), np.array([[big, 0.0], [0.0, big]]))
    assert wrong["ece"] == pytest.approx(1.0)


def test_shots_curve_only_when_runs_differ_in_shots(three_runs: dict[str, Path]) -> None:
    runs = [read_run(three_runs["linear"]), read_run(three_runs["grid"])]
    assert shots_figure(runs, ["a", "b"], differing_knobs(runs)) is None
    # a shots knob (as a data-efficiency run records it) that differs gives one curve
    for r, n in zip(runs, (4, 16), strict=True):
        r["config"] = dict(r["config"], shots=n)
        if "selected_config" in r["config"]:  # a grid's selected configuration records its shots
            r["config"]["selected_config"] = dict(r["config"]["selected_config"], shots=n)
    knobs = differing_knobs(runs)
    assert "shots" in knobs
    # (the grid's carved validation vs none is a real difference, shown; left out of the lines here)
    uri = shots_figure(runs, ["a", "b"], [k for k in knobs if k not in ("pipeline", "val_fraction", "weight_decay", "lr", "validation")])
    assert uri and base64.b64decode(uri.split(",", 1)[1]).startswith(b"\x89PNG")


# --------------------------------------------------------------------------------------
# In a real browser


def _browser() -> tuple[str, str]:
    """Paths of the distribution's chromium and chromedriver, or skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no headless browser: install the distribution's chromium and chromedriver "
                    "(Debian: apt-get install chromium chromium-driver), as .ci/run does")
    return chrome, driver


@pytest.mark.slow  # starts a headless browser; the page's content is checked fast above
def test_page_renders_in_chromium_and_the_table_sorts(three_runs: dict[str, Path], tmp_path: Path) -> None:
    chrome, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    page = write_html(collect_runs([str(p) for p in three_runs.values()]), tmp_path / "report.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,900", "--hide-scrollbars"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        browser.get(page.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) == 14
        for alt, complete, width, height in images:
            assert complete and width > 0 and height > 0, alt
        assert browser.find_element(By.CSS_SELECTOR, "details.config summary").text.startswith("lin")

        headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#metric-table th")]

        def column(title: str) -> list[str]:
            i = headers.index(title)
            return [tr.find_elements(By.TAG_NAME, "td")[i].text
                    for tr in browser.find_elements(By.CSS_SELECTOR, "#metric-table tbody tr")]

        def click(title: str) -> None:
            browser.find_elements(By.CSS_SELECTOR, "#metric-table th")[headers.index(title)].click()

        def value(cell: str) -> float:  # "62.50" over "± 2.50"
            mean, std = cell.split("\n")
            assert std.startswith("± ")
            return float(mean)

        assert column("Run") == ["lin", HOSTILE, "grid"]  # the order given
        click("AUC")
        auc = [value(c) for c in column("AUC")]
        assert auc == sorted(auc) and len(set(auc)) == 3
        click("AUC")
        assert [value(c) for c in column("AUC")] == sorted(auc, reverse=True)
        click("Run")
        assert column("Run") == sorted(["lin", HOSTILE, "grid"], key=str.lower)  # localeCompare
        assert browser.find_elements(By.CSS_SELECTOR, "#metric-table th")[0].get_attribute("aria-sort") == "ascending"
        # a full-page screenshot, kept beside the page (and copied where FEATCACHE_SCREENSHOT says)
        height = browser.execute_script("return document.documentElement.scrollHeight;")
        browser.set_window_size(1300, min(int(height) + 100, 12000))
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
        if os.environ.get("FEATCACHE_SCREENSHOT"):
            shutil.copy(shot, os.environ["FEATCACHE_SCREENSHOT"])
    finally:
        browser.quit()


def test_html_table_puts_the_metrics_before_the_differing_settings(three_runs: dict[str, Path]) -> None:
    """A long setting (a prompt template) never pushes the figures out of view."""
    from featcache.report import _table

    frame, knobs = report_frame(collect_runs([str(p) for p in three_runs.values()]).runs)
    headers = _table(frame, knobs)["headers"]
    assert knobs and headers[:4] == ["Run", "Method", "Seeds", "Many"]
    assert max(headers.index(t) for t in ("AUC", "ECE")) < min(headers.index(k.removeprefix("config_")) for k in knobs)
