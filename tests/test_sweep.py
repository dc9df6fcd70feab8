"""The hostile-input sweep (issue 17), kept as a table so every case runs on every CI run.

Each :class:`Case` is ``(id, build, expect)``: ``build(inputs)`` lays out whatever the case
needs under a fresh temporary folder and returns the command's arguments; the check is the
same for all cases (:func:`test_case`): the command exits non-zero, its stderr holds every
fragment of ``expect``, nothing prints a traceback or the "this is a bug" line, and every
file present before the command (earlier outputs, the inputs) is byte-identical after it.
A case may add its own ``check(inputs)`` (for instance: a payload's marker file does not
exist). Commands run in-process through click's ``CliRunner``.

To add a case: write a builder (a few lines using :class:`Inputs`) and one row in ``CASES``
(or a ``(id, builder, args, fragment)`` row in tests/sweep_cache_cases.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from fixtures_data import write_cifar100, write_csv_list, write_folder, write_image
from sweep_cache_cases import CASES as CACHE_ROWS
from sweep_cache_cases import release_held

from featcache.cli import main

SYNTH_OPTS = ("--option", "max_per_class=12", "--option", "test_per_class=2", "--option", "num_classes=3")


class Inputs:
    """What a builder works with: a fresh folder ``tmp`` and shared, built-once inputs."""

    def __init__(self, tmp: Path, shared: Path) -> None:
        self.tmp, self.shared = tmp, shared
        self.placeholders: dict[str, str] | None = None  # set by a row's builder (from_row)

    def cache(self, name: str = "c.h5", **kw: object) -> Path:
        """A synthetic feature cache (built once per distinct ``kw``), copied to ``tmp/name``."""
        key = hashlib.sha1(repr(sorted(kw.items())).encode()).hexdigest()[:10]
        src = self.shared / f"cache-{key}.h5"
        if not src.exists():
            kw.setdefault("counts", [40, 24, 16])
            kw.setdefault("num_classes", len(kw["counts"]))
            make_feature_cache(src, **kw)
        return Path(shutil.copy(src, self.tmp / name))

    def run(self, name: str = "run") -> Path:
        """A finished ``train-head`` run on :meth:`cache` (trained once), copied to ``tmp/name``."""
        src = self.shared / "run"
        if not src.exists():
            cache = self.cache("train.h5")
            res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--seeds", "0,1",
                                            "--epochs", "2", "--device", "cpu", "--out", str(src)])
            assert res.exit_code == 0, res.output
        return Path(shutil.copytree(src, self.tmp / name))


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links and an output's ``.lock`` file, which a run takes and
    removes, left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")}


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(inputs) -> args``; stderr must hold every ``expect`` fragment
    (formatted with ``inputs.placeholders`` when the builder set them)."""

    id: str
    build: Callable[[Inputs], list[str]]
    expect: tuple[str, ...]
    check: Callable[[Inputs], None] | None = None


def from_row(row: tuple) -> Case:
    """A ``(case id, builder(tmp) -> placeholders, args, fragment)`` row as a :class:`Case`."""
    case_id, build, args, fragment = row

    def build_args(inputs: Inputs) -> list[str]:
        inputs.placeholders = build(inputs.tmp)
        return [a.format(**inputs.placeholders) for a in args]

    return Case(case_id, build_args, (fragment,))


# --------------------------------------------------------------------------------------
# Security: checkpoints that would run code


class _Payload:
    """Pickles as ``open(marker, "w")``: loading it with a full unpickler creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, base: dict | None = None) -> None:
    """Replace the checkpoint at ``path`` with ``base`` plus an entry that would run code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**(base or {}), "payload": _Payload(marker)}, path)


def _no_marker(inputs: Inputs) -> None:
    assert not (inputs.tmp / "PWNED").exists(), "the checkpoint's payload ran"


def predict_hostile_checkpoint(inputs: Inputs) -> list[str]:
    run = inputs.run()
    ck = run / "checkpoints" / "seed-0.pt"
    good = torch.load(ck, weights_only=True)
    _plant(ck, inputs.tmp / "PWNED", good)
    return ["predict", "--run", str(run), "--cache", str(inputs.cache()), "--device", "cpu",
            "--out", str(inputs.tmp / "pred")]


def predict_hostile_second_checkpoint(inputs: Inputs) -> list[str]:
    run = inputs.run()
    _plant(run / "checkpoints" / "seed-1.pt", inputs.tmp / "PWNED", torch.load(run / "checkpoints" / "seed-1.pt", weights_only=True))
    return ["predict", "--run", str(run), "--cache", str(inputs.cache()), "--device", "cpu",
            "--out", str(inputs.tmp / "pred")]


def finetune_resume_hostile_checkpoint(inputs: Inputs) -> list[str]:
    out = inputs.tmp / "ft"
    _plant(out / "checkpoints" / "seed-0.pt", inputs.tmp / "PWNED", {"config": {}, "epoch": 1})
    return ["finetune", "--dataset", "synthetic-lt", *SYNTH_OPTS, "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--no-progress", "--workers", "0", "--out", str(out), "--resume"]


def predict_truncated_checkpoint(inputs: Inputs) -> list[str]:
    run = inputs.run()
    ck = run / "checkpoints" / "seed-0.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    return ["predict", "--run", str(run), "--cache", str(inputs.cache()), "--device", "cpu",
            "--out", str(inputs.tmp / "pred")]


def cifar_hostile_train_pickle(inputs: Inputs) -> list[str]:
    root = write_cifar100(inputs.tmp / "cifar", train_per_class=1, test_per_class=1)
    train = root / "cifar-100-python" / "train"
    with open(train, "rb") as f:
        entry = pickle.load(f)
    entry["batch_label"] = _Payload(inputs.tmp / "PWNED")
    with open(train, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return ["extract", "--dataset", "cifar100-lt", "--root", str(root), "--workers", "0",
            "--out", str(inputs.tmp / "c.h5")]


CASES: list[Case] = [
    Case("predict-hostile-checkpoint", predict_hostile_checkpoint,
         ("Refusing checkpoint", "seed-0.pt", "could run code"), _no_marker),
    Case("predict-hostile-second-checkpoint", predict_hostile_second_checkpoint,
         ("Refusing checkpoint", "seed-1.pt"), _no_marker),
    Case("finetune-resume-hostile-checkpoint", finetune_resume_hostile_checkpoint,
         ("Refusing checkpoint", "seed-0.pt"), _no_marker),
    Case("predict-truncated-checkpoint", predict_truncated_checkpoint,
         ("Checkpoint", "seed-0.pt", "could not be read")),
    Case("cifar-hostile-pickle", cifar_hostile_train_pickle,
         ("CIFAR-100 pickle", "cifar-100-python/train", "refers to io.open", "refusing"), _no_marker),
]


# --------------------------------------------------------------------------------------
# Silent wrong results: run directories, options, class lists


def _train(inputs: Inputs, *extra: str) -> list[str]:
    return ["train-head", "--cache", str(inputs.cache()), "--seeds", "0", "--epochs", "1",
            "--device", "cpu", "--out", str(inputs.tmp / "new"), *extra]


def train_into_existing_run(inputs: Inputs) -> list[str]:
    run = inputs.run()
    return ["train-head", "--cache", str(inputs.cache()), "--seeds", "0", "--epochs", "1",
            "--device", "cpu", "--out", str(run)]


def _predict_to(out: Callable[[Path], Path]) -> Callable[[Inputs], list[str]]:
    def build(inputs: Inputs) -> list[str]:
        run = inputs.run()
        return ["predict", "--run", str(run), "--cache", str(inputs.cache()), "--device", "cpu",
                "--out", str(out(run))]
    return build


def predict_over_earlier_prediction(inputs: Inputs) -> list[str]:
    args = _predict_to(lambda run: run.parent / "pred")(inputs)
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    return args


def _options(*extra: str) -> Callable[[Inputs], list[str]]:
    return lambda inputs: _train(inputs, *extra)


def one_class_cache(inputs: Inputs) -> list[str]:
    cache = inputs.cache("one.h5", counts=[40], num_classes=1)
    return ["train-head", "--cache", str(cache), "--seeds", "0", "--epochs", "1", "--device", "cpu",
            "--out", str(inputs.tmp / "new")]


def _extract(inputs: Inputs, dataset: str, root: Path, *options: str) -> list[str]:
    opts = [a for o in options for a in ("--option", o)]
    return ["extract", "--dataset", dataset, "--root", str(root), *opts, "--workers", "0",
            "--out", str(inputs.tmp / "c.h5")]


def folder_splits_name_different_classes(inputs: Inputs) -> list[str]:
    """train/ has a, b; test/ has a, b, c: the extraction warns, train-head refuses."""
    root = write_folder(inputs.tmp / "data", splits={"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1, "c": 1}})
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("featcache").addHandler(handler)
    try:
        res = CliRunner().invoke(main, _extract(inputs, "folder", root))
    finally:
        logging.getLogger("featcache").removeHandler(handler)
    assert res.exit_code == 0, res.output
    assert any("class(es) c have no train images" in w for w in warnings), warnings
    return ["train-head", "--cache", str(inputs.tmp / "c.h5"), "--protocol", "official", "--seeds", "0",
            "--epochs", "1", "--device", "cpu", "--out", str(inputs.tmp / "new")]


def folder_case_twins(inputs: Inputs) -> list[str]:
    return _extract(inputs, "folder", write_folder(inputs.tmp / "data", {"MEL": 2, "mel": 2, "nv": 2}))


def _csv(rows: list[dict[str, str]], *options: str) -> Callable[[Inputs], list[str]]:
    def build(inputs: Inputs) -> list[str]:
        csv = write_csv_list(inputs.tmp / "data", rows)
        return _extract(inputs, "csv", inputs.tmp / "data", f"csv={csv}", *options)
    return build


def _rows(labels: list[str]) -> list[dict[str, str]]:
    return [{"path": f"images/{i}.png", "label": label} for i, label in enumerate(labels)]


def csv_outside_root(inputs: Inputs) -> list[str]:
    elsewhere = write_image(inputs.tmp / "elsewhere" / "x.png")
    rows = _rows(["a", "b", "a"]) + [{"path": str(elsewhere), "label": "b", "_no_file": "1"}]
    return _csv(rows)(inputs)


def csv_climbs_out_of_root(inputs: Inputs) -> list[str]:
    write_image(inputs.tmp / "elsewhere" / "x.png")
    rows = _rows(["a", "b", "a"]) + [{"path": "../elsewhere/x.png", "label": "b", "_no_file": "1"}]
    return _csv(rows)(inputs)


# --------------------------------------------------------------------------------------
# Malformed text input


def latin1_csv(inputs: Inputs) -> list[str]:
    args = _csv(_rows(["naevus", "melanoma", "naevus"]))(inputs)
    csv = inputs.tmp / "data" / "labels.csv"
    csv.write_bytes(csv.read_bytes().replace(b"naevus", "nævus".encode("latin-1")))
    return args


def non_utf8_file_name(inputs: Inputs) -> list[str]:
    root = write_folder(inputs.tmp / "data", {"a": 2, "b": 2})
    bad = os.fsencode(root / "a") + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write((root / "a" / "a_0.png").read_bytes())
    return _extract(inputs, "folder", root)


def report_malformed_json(inputs: Inputs) -> list[str]:
    run = inputs.run()
    (run / "metrics.json").write_text('{"acc": 0.5, "per_seed": [')
    return ["report", str(run)]


def report_json_not_object(inputs: Inputs) -> list[str]:
    run = inputs.run()
    (run / "metrics.json").write_text("[1, 2]")
    return ["report", str(run)]


CASES += [
    Case("train-head-into-existing-run", train_into_existing_run,
         ("already holds a run", "checkpoints/seed-0.pt", "--overwrite", "nothing was changed")),
    Case("train-head-ensemble-into-existing-run", lambda inputs: [*train_into_existing_run(inputs), "--ensemble", "logit"],
         ("already holds a run", "--overwrite")),
    Case("predict-out-is-the-run", _predict_to(lambda run: run), ("is the run directory",)),
    Case("predict-out-inside-the-run", _predict_to(lambda run: run / "sub"), ("inside the run directory",)),
    Case("predict-over-earlier-prediction", predict_over_earlier_prediction, ("already holds a run", "--overwrite")),
    Case("train-head-weight-decay-nan", _options("--weight-decay", "nan"), ("--weight-decay must be a finite number, got nan",)),
    Case("train-head-la-tau-inf", _options("--loss", "la", "--la-tau", "inf"), ("--la-tau must be a finite number, got inf",)),
    Case("train-head-gamma-nan", _options("--loss", "focal", "--gamma", "nan"), ("--gamma must be a finite number",)),
    Case("train-head-posthoc-tau-inf", _options("--posthoc-tau", "-inf"), ("--posthoc-tau must be a finite number, got -inf",)),
    Case("train-head-tau-inf", _options("--head", "cosine", "--tau", "inf"), ("--tau must be a finite number, got inf",)),
    Case("train-head-tau-nan", _options("--head", "cosine", "--tau", "nan"), ("--tau must be a finite number, got nan",)),
    Case("train-head-lr-nan", _options("--lr", "nan"), ("--lr must be a finite number",)),
    Case("train-head-test-per-class-negative", _options("--protocol", "tfa-lt", "--test-per-class", "-5"),
         ("--test-per-class must be an integer >= 1, got -5",)),
    Case("train-head-huge-epochs", _options("--epochs", str(10**30)), ("--epochs is out of range",)),
    Case("train-head-huge-seed", _options("--seeds", str(10**30)), ("--seeds must be integers from 0 to",)),
    Case("train-head-negative-seed", _options("--seeds", "-1"), ("--seeds must be integers from 0 to", "got -1")),
    Case("train-head-one-class-cache", one_class_cache, ("has 1 class", "at least two")),
    Case("train-head-cb-beta-nan", _options("--loss", "cb", "--cb-beta", "nan"), ("--cb-beta must be a finite number",)),
    Case("train-head-ensemble-lr-nan", _options("--ensemble", "logit", "--ensemble-lr", "nan"),
         ("--ensemble-lr must be a finite number",)),
    Case("train-head-huge-batch-size", _options("--batch-size", str(10**30)), ("--batch-size is out of range",)),
    Case("grid-huge-epochs", lambda inputs: ["grid", "--cache", str(inputs.cache()), "--head", "linear", "--seeds", "0",
                                             "--param", f"epochs={10**30}", "--device", "cpu", "--out", str(inputs.tmp / "g")],
         ("--epochs is out of range",)),
    Case("extract-option-huge-integer", lambda inputs: ["extract", "--dataset", "synthetic-lt", "--option",
                                                        f"num_classes={10**30}", "--out", str(inputs.tmp / "c.h5")],
         ("--option num_classes=", "num_classes is out of range")),
    Case("extract-option-inf", lambda inputs: ["extract", "--dataset", "synthetic-lt", "--option", "imbalance=1e400",
                                               "--out", str(inputs.tmp / "c.h5")],
         ("imbalance must be a finite number",)),
    Case("finetune-huge-seed", lambda inputs: ["finetune", "--dataset", "synthetic-lt", "--seeds", str(10**30),
                                               "--out", str(inputs.tmp / "ft")],
         ("--seeds must be integers from 0 to",)),
    Case("folder-splits-name-different-classes", folder_splits_name_different_classes,
         ("class(es) c", "no training rows", "c.h5")),
    Case("folder-classes-differ-only-in-case", folder_case_twins, ("'MEL' and 'mel'", "differ only in case")),
    Case("csv-classes-differ-only-in-case", _csv(_rows(["MEL", "mel", "nv", "MEL"])), ("'MEL' and 'mel'", "differ only in case")),
    Case("csv-one-class", _csv(_rows(["nv", "nv", "nv"])), ("has 1 class", "at least two")),
    Case("csv-absolute-path-outside-root", csv_outside_root,
         ("line 5", "points outside the data root", "allow_outside_root=true")),
    Case("csv-path-climbing-out-of-root", csv_climbs_out_of_root,
         ("line 5", "../elsewhere/x.png", "points outside the data root")),
    Case("csv-latin1", latin1_csv, ("labels.csv is not UTF-8 text", "line 2", "0xe6", "iconv")),
    Case("csv-classes-option-a-number", _csv(_rows(["a", "b", "a"]), "classes=5"), ("unknown class 'a'", "Expected one of: 5")),
    Case("csv-classes-option-huge-number", _csv(_rows(["a", "b", "a"]), f"classes={10**30}"), ("classes is out of range",)),
    Case("non-utf8-file-name", non_utf8_file_name, ("caf\\xe9.png", "not valid UTF-8", "rename")),
    Case("report-malformed-json", report_malformed_json, ("metrics.json is not valid JSON", "line 1")),
    Case("report-json-not-an-object", report_json_not_object, ("metrics.json holds a JSON list",)),
    # the cache contract, import-features and extraction (tests/sweep_cache_cases.py)
    *(from_row(row) for row in CACHE_ROWS),
]


# --------------------------------------------------------------------------------------
# The check every case shares


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep-shared")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs (runs/...) land in the case's folder
    inputs = Inputs(tmp_path, shared)
    try:
        args = case.build(inputs)
        before = _snapshot(tmp_path)
        res = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        release_held()
    stderr, out = res.stderr, res.output
    assert res.exit_code != 0, f"exit 0 for {case.id}:\n{out}"
    assert isinstance(res.exception, SystemExit), f"{case.id} raised {res.exception!r}"
    for fragment in case.expect:
        if inputs.placeholders is not None:
            fragment = fragment.format(**inputs.placeholders)
        assert fragment in stderr, f"{fragment!r} not in stderr of {case.id}:\n{stderr}"
    assert "Traceback" not in out and "this is a bug" not in out.lower(), out
    after = _snapshot(tmp_path)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"{case.id} changed or removed earlier files: {changed}"
    if case.check is not None:
        case.check(inputs)


# --------------------------------------------------------------------------------------
# Cases whose refusal is not the whole story: genuine files must still load


def test_cifar_restricted_unpickler_loads_the_official_format(tmp_path: Path) -> None:
    """The official files are protocol-2 pickles naming ``numpy.core.multiarray`` (numpy 1.x):
    rewritten that way, the fixture still loads through the restricted unpickler."""
    import numpy as np

    from featcache.datasets import build_manifest
    from featcache.datasets.cifar import _unpickle

    root = write_cifar100(tmp_path, train_per_class=1, test_per_class=1)
    for name in ("train", "test", "meta"):
        path = root / "cifar-100-python" / name
        with open(path, "rb") as f:
            entry = pickle.load(f)
        if "filenames" in entry:
            entry["filenames"] = [n.encode() for n in entry["filenames"]]  # py2 str = bytes
        raw = pickle.dumps(entry, protocol=2).replace(b"numpy._core.", b"numpy.core.")
        path.write_bytes(raw)
    assert b"numpy.core.multiarray\n_reconstruct" in (root / "cifar-100-python" / "train").read_bytes()
    d = _unpickle(root / "cifar-100-python" / "train")
    assert isinstance(d["data"], np.ndarray) and d["data"].dtype == np.uint8 and d["data"].shape == (100, 3072)
    assert build_manifest("cifar100-lt", root, imbalance=10).descriptor.num_classes == 100


def test_user_text_stays_literal_in_prompts_and_in_rich_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data type ``{0.__class__.__mro__}`` and class names ``{``, ``[/]`` reach the text
    encoder as written (no ``str.format``), and ``featcache info`` prints them (no markup)."""
    from featcache import models
    from featcache.prompts import fill_prompt, render_templates

    assert fill_prompt(render_templates("{0.__class__.__mro__}")[0], "{") == \
        "The category of this {0.__class__.__mro__} image is {."
    assert fill_prompt("a {} x-ray of {}.", "cat") == "a {} x-ray of cat."  # the class slot is the last {}

    labels = ["{", "[/]", "{0.__class__.__mro__}"]
    rows = [{"path": f"images/{i}.png", "label": labels[i % 3]} for i in range(6)]
    csv = write_csv_list(tmp_path / "data", rows)
    seen: list[str] = []
    real = models.text_features

    def spy(backbone, prompts, device, batch=256):  # noqa: ANN001, ANN202
        seen.extend(prompts)
        return real(backbone, prompts, device, batch)

    monkeypatch.setattr(models, "text_features", spy)
    out = tmp_path / "c.h5"
    res = CliRunner().invoke(main, ["extract", "--dataset", "csv", "--root", str(tmp_path / "data"),
                                    "--option", f"csv={csv}", "--option", "data_type={0.__class__.__mro__}",
                                    "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "The category of this {0.__class__.__mro__} image is {." in seen
    assert "The category of this {0.__class__.__mro__} image is [/]." in seen
    assert "a photo of a {0.  class  .  mro  }." in seen  # readable(): "_" -> " ", nothing evaluated
    assert not any("<class" in p for p in seen)
    res = CliRunner().invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert "[/]" in res.output and "{0.__class__.__mro__}" in res.output


def test_overwrite_replaces_the_earlier_run_without_stale_checkpoints(tmp_path: Path, shared: Path) -> None:
    inputs = Inputs(tmp_path, shared)
    run = inputs.run()  # seeds 0 and 1
    (run / "notes.txt").write_text("mine")
    res = CliRunner().invoke(main, ["train-head", "--cache", str(inputs.cache()), "--seeds", "5", "--epochs", "1",
                                    "--device", "cpu", "--out", str(run), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["seed-5.pt"]
    assert (run / "notes.txt").read_text() == "mine"  # only a run's own files are removed
    res = CliRunner().invoke(main, ["predict", "--run", str(run), "--cache", str(inputs.cache()), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    pred = tmp_path / "run-predict-c"  # the default is beside the run, not inside it
    assert (pred / "metrics.json").is_file() and not (run / "predict-c").exists()
    assert '"seed": 5' in (pred / "metrics.json").read_text()


def test_csv_paths_outside_the_root_load_with_the_explicit_option(tmp_path: Path) -> None:
    from featcache.datasets import build_manifest

    elsewhere = write_image(tmp_path / "elsewhere" / "x.png")
    rows = _rows(["a", "b", "a"]) + [{"path": str(elsewhere), "label": "b", "_no_file": "1"}]
    csv = write_csv_list(tmp_path / "data", rows)
    m = build_manifest("csv", tmp_path / "data", csv=str(csv), allow_outside_root="true")
    assert m.sources[-1] == str(elsewhere) and m.options["allow_outside_root"] is True
    inside = build_manifest("csv", tmp_path / "data", csv=str(write_csv_list(tmp_path / "data", _rows(["a", "b"]), "in.csv")))
    assert "allow_outside_root" not in inside.options  # unchanged options (and fingerprints) by default


def test_an_unexpected_exception_is_one_line_naming_the_command_and_the_traceback_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featcache import runs

    def broken(run_dir: str) -> dict:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(runs, "read_run", broken)
    monkeypatch.setenv("FEATCACHE_LOG_DIR", str(tmp_path / "logs"))
    res = CliRunner().invoke(main, ["report", "some-run"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "this is a bug" in lines[0].lower() and "featcache report some-run" in lines[0]
    assert "ZeroDivisionError: simulated bug" in lines[0]
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    text = logs[0].read_text()
    assert "Traceback" in text and "simulated bug" in text and "featcache report some-run" in text


def test_checkpoints_are_written_as_plain_data_only(tmp_path: Path) -> None:
    """save_checkpoint turns numpy and paths into plain values and refuses other objects, so
    every checkpoint featcache writes loads with weights_only=True."""
    import numpy as np

    from featcache.runs import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoints" / "seed-0.pt"
    save_checkpoint(path, {"n": np.int64(3), "where": tmp_path, "w": torch.ones(2), "a": np.zeros(2, np.float32),
                           "nested": [{"t": (1, 2.5, None, "x")}]})
    ck = load_checkpoint(path)
    assert ck["n"] == 3 and type(ck["n"]) is int and ck["where"] == str(tmp_path)
    assert torch.equal(ck["a"], torch.zeros(2)) and ck["nested"][0]["t"] == (1, 2.5, None, "x")
    with pytest.raises(TypeError, match=r"checkpoint\['cfg'\] is a .*Inputs"):
        save_checkpoint(path, {"cfg": Inputs(tmp_path, tmp_path)})
    assert load_checkpoint(path)["n"] == 3  # the refused write left the earlier file alone
