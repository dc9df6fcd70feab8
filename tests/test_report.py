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


# --------------------------------------------------------------------------------------
# Bootstrap intervals and the two-class rates

LONG = "isic2018-tiny-clip-random-tte-"  # the start default names share: shown once
INTERVALS = (("Total", "acc"), ("F1", "macro_f1"), ("Bal.", "balanced_acc"), ("AUC", "auc"),
             ("Sens.", "sensitivity"), ("Spec.", "specificity"))


@pytest.fixture(scope="module")
def ci_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two-class runs with long names, with and without ``--bootstrap``; multi-class ones too."""
    from featcache.pipelines import train_head

    root = tmp_path_factory.mktemp("intervals")
    binary = make_feature_cache(root / "bin.h5", num_classes=2, counts=[120, 60], dim=8, noise=0.8, seed=2)
    multi = make_feature_cache(root / "multi.h5", num_classes=4, dim=8)
    runs = {"bin-boot": root / "runs" / f"{LONG}linear-la-wrs-bootstrap-200-seeds-0-1",
            "bin-plain": root / "runs" / f"{LONG}cosine-focal-instance-no-intervals",
            "multi-boot": root / "runs" / "multi-boot", "multi-plain": root / "runs" / "multi-plain"}
    for key, path in runs.items():
        train_head.run(train_head.TrainHeadConfig(
            cache=str(binary if key.startswith("bin") else multi), out=str(path),
            head="cosine" if key.endswith("plain") else "linear",
            bootstrap=150 if key.endswith("boot") else 0, **FAST))
    return runs


def _boot(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_frame_carries_intervals_and_binary_rates_only_where_runs_have_them(ci_runs: dict[str, Path]) -> None:
    frame, _ = report_frame([read_run(ci_runs[k]) for k in ("bin-boot", "bin-plain")])
    doc, plain = _boot(ci_runs["bin-boot"]), _boot(ci_runs["bin-plain"])
    for _, key in INTERVALS:
        assert frame[f"{key}_ci_lo"].to_list() == [doc["bootstrap"][f"{key}_ci"][0], None]
        assert frame[f"{key}_ci_hi"].to_list() == [doc["bootstrap"][f"{key}_ci"][1], None]
    for key in ("sensitivity", "specificity"):
        assert frame[key].to_list() == pytest.approx([doc[key], plain[key]])
        assert frame[f"{key}_std"].to_list() == pytest.approx([doc[f"{key}_std"], plain[f"{key}_std"]])
    assert frame["bootstrap_n"].to_list() == [150, None] and frame["ci_level"][0] == 0.95
    # multi-class runs: intervals of acc, balanced acc, macro F1 and AUC, no sensitivity/specificity
    multi, _ = report_frame([read_run(ci_runs[k]) for k in ("multi-boot", "multi-plain")])
    assert {"acc_ci_lo", "balanced_acc_ci_hi", "macro_f1_ci_lo", "auc_ci_hi"} <= set(multi.columns)
    assert not [c for c in multi.columns if c.startswith(("sensitivity", "specificity"))]
    # no run with intervals: no interval column at all
    none, _ = report_frame([read_run(ci_runs["multi-plain"]), read_run(ci_runs["bin-plain"])])
    assert not [c for c in none.columns if "_ci_" in c or c in ("bootstrap_n", "ci_level")]
    assert "sensitivity" in none.columns  # a two-class run is among them


def _ci_rows(out: str) -> dict[str, list[str]]:
    """The interval table's rows, run name (its wrapped lines joined) -> cells."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if "bootstrap intervals" in ln)
    rule = next(i for i in range(start, len(lines)) if set(lines[i].strip()) <= set("─━┡╇┩"))
    rows: dict[str, list[str]] = {}
    name, pending = None, False
    for ln in lines[rule + 1:]:
        cells = [c.strip() for c in re.split(r"\s{2,}|│", ln.strip()) if c.strip()]
        if not cells or ln.startswith(("Read ", "└")):
            break
        values = [c for c in cells if re.search(r"\d+\.\d\d", c) or c == "–"]
        text = "".join(c for c in cells if c not in values)
        if values and not pending:  # a run's first line
            name, rows[text] = text, values
        else:  # the rest of a wrapped name and of intervals on two lines (``60.00–`` over ``87.50``)
            if values:
                rows[name] = [a + b for a, b in zip(rows[name], values, strict=True)]
            rows[name + text] = rows.pop(name)
            name += text
        pending = any(v.endswith("–") and v != "–" for v in rows[name])
    return rows


def test_report_cli_shows_the_runs_intervals_and_binary_rates(ci_runs: dict[str, Path], tmp_path: Path) -> None:
    from featcache.report import fmt_interval

    paths = [str(ci_runs[k]) for k in ("bin-boot", "bin-plain")]
    doc = _boot(ci_runs["bin-boot"])
    short = ci_runs["bin-boot"].name.removeprefix(LONG)
    for width, compact in (("250", False), ("100", True), ("80", True)):  # 80: intervals on two lines
        res = CliRunner(env={"COLUMNS": width}).invoke(main, ["report", *paths, "--out", str(tmp_path / "t")])
        assert res.exit_code == 0, res.output
        table = [ln for ln in res.stdout.splitlines() if not ln.startswith("Read ")]  # (paths)
        assert max(len(ln) for ln in table) <= int(width), res.stdout
        assert "…" not in res.stdout
        header = next(ln for ln in res.stdout.splitlines() if "Run" in ln and "Many" in ln)
        assert "Sens." in header and "Spec." in header
        assert "95 % bootstrap intervals" in res.stdout and "150 resamples" in res.stdout
        rows = _ci_rows(res.stdout)
        assert list(rows) == [short]  # only the run that has intervals
        assert rows[short] == [fmt_interval(*doc["bootstrap"][f"{k}_ci"], compact=compact) for _, k in INTERVALS]
    # the files carry them too
    table = pl.read_parquet(tmp_path / "t.parquet")
    assert table["acc_ci_lo"][0] == doc["bootstrap"]["acc_ci"][0] and table["acc_ci_hi"][1] is None
    assert table["sensitivity"][0] == pytest.approx(doc["sensitivity"])
    csv = pl.read_csv(tmp_path / "t.csv")
    assert {"specificity_ci_hi", "bootstrap_n"} <= set(csv.columns)
    for frame in (table, csv):  # the AUC interval too
        assert frame["auc_ci_lo"].to_list() == pytest.approx([doc["bootstrap"]["auc_ci"][0], None])
        assert frame["auc_ci_hi"].to_list() == pytest.approx([doc["bootstrap"]["auc_ci"][1], None])
    md = (tmp_path / "t.md").read_text().splitlines()
    assert "| AUC | Sens. | Spec. | ECE |" in md[0]
    for key in ("sensitivity", "auc"):
        lo, hi = doc["bootstrap"][f"{key}_ci"]
        assert f"{100 * doc[key]:.2f} ± {100 * doc[f'{key}_std']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" in md[2]
    assert "[" not in md[3]  # the run without intervals
    # multi-class runs: no Sens./Spec.; runs without intervals: no interval table
    res = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["report", str(ci_runs["multi-boot"]),
                                                          str(ci_runs["multi-plain"])])
    assert res.exit_code == 0 and "Sens." not in res.stdout and "Spec." not in res.stdout
    assert list(_ci_rows(res.stdout)) == ["multi-boot"]
    res = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["report", str(ci_runs["multi-plain"]),
                                                          str(ci_runs["bin-plain"])])
    assert res.exit_code == 0 and "bootstrap" not in res.stdout and "[" not in res.stdout


def test_long_run_names_wrap_to_80_columns_whole(ci_runs: dict[str, Path]) -> None:
    """The two tables of two-class runs with long names fit 80 columns: the names wrap over
    lines (every character kept), the numbers are whole."""
    paths = [str(ci_runs[k]) for k in ("bin-boot", "bin-plain")]
    res = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["report", *paths])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80 and "…" not in res.stdout
    for key in ("bin-boot", "bin-plain"):
        doc, short = _boot(ci_runs[key]), ci_runs[key].name.removeprefix(LONG)
        assert len(short) > 30  # too long for one line beside eleven columns at 80
        first = next(i for i, ln in enumerate(lines) if ln.startswith(short[:6]) and "Run" not in ln)
        row = lines[first].split()
        assert row[1:] == [f"{100 * doc[k]:.2f}" if doc[k] is not None else "–"
                           for k in ("many_acc", "medium_acc", "few_acc", "acc", "macro_f1", "balanced_acc",
                                     "auc", "sensitivity", "specificity", "ece")]
        name, i = row[0], first + 1
        while not re.search(r"\d\.\d", lines[i]) and lines[i].strip() and not lines[i].startswith("Settings"):
            name, i = name + lines[i].strip(), i + 1
        assert name == short
    # the six intervals of a two-class run (Total, F1, Bal., AUC, Sens., Spec.) fit 80 columns
    # only with each on two lines: its first line ends every interval at the dash
    start = next(i for i, ln in enumerate(lines) if "bootstrap intervals" in ln)
    first = next(ln for ln in lines[start:] if re.search(r"\d+\.\d\d", ln))
    assert len(re.findall(r"\d+\.\d\d–(?!\d)", first)) == 6


def test_html_shows_intervals_under_the_figures_and_binary_columns(ci_runs: dict[str, Path]) -> None:
    from featcache.report import _table, fmt_interval, render_html

    collected = collect_runs([str(ci_runs[k]) for k in ("bin-boot", "bin-plain")])
    frame, knobs = report_frame(collected.runs)
    table = _table(frame, knobs)
    headers = table["headers"]
    assert headers[headers.index("AUC") + 1:headers.index("ECE")] == ["Sens.", "Spec."]
    doc = _boot(ci_runs["bin-boot"])
    for title, key in INTERVALS:
        cell = table["rows"][0][headers.index(title)]
        assert cell["ci"] == fmt_interval(*doc["bootstrap"][f"{key}_ci"]) and cell["text"] == f"{100 * doc[key]:.2f}"
        assert table["rows"][1][headers.index(title)]["ci"] == ""
    assert "150 resamples" in table["intervals"]
    html = render_html(collected)
    for key in ("specificity", "auc"):
        lo, hi = doc["bootstrap"][f"{key}_ci"]
        assert f'<span class="ci">[{100 * lo:.2f}, {100 * hi:.2f}]</span>' in html
    assert "Sens./Spec.: sensitivity and specificity of class 1" in html
    multi = collect_runs([str(ci_runs["multi-plain"]), str(ci_runs["multi-boot"])])
    table = _table(*report_frame(multi.runs))
    assert "Sens." not in table["headers"] and "Sens./Spec." not in render_html(multi)
    plain = render_html(collect_runs([str(ci_runs["multi-plain"])]))
    assert 'class="ci"' not in plain and "bootstrap intervals" not in plain
