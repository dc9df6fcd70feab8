"""``featcache reproduce tfa-lt``: the rows of TFA-LT's Tables 1 and 2 that run from frozen
features, over 3 seeds, as a markdown table in the paper's layout plus parquet.

Each row's mapping onto featcache and what in the paper it rests on is :data:`ROWS`; both
are written into ``config.json`` (``rows``) and ``tables.md``. In short:

Table 1: CLIP zero-shot (``zeroshot``: cosine to the prompts' text features, no training);
CLIP linear probe (``logreg``: CLIP's own protocol, L-BFGS logistic regression with C
chosen on a validation split carved from the training rows); CE and Focal (the frozen-feature
linear classifier ``linear`` trained with that loss for ``baseline_epochs`` = 300 epochs, the
paper's epochs for its comparison methods); TFA-LT logit-wise and feature-wise.
Table 2 (ablation): zero-shot (= Table 1's run); adapter only (ONE adapter trained on the
long-tailed set without balancing, CE, stage-I epochs); ensembler only (the ensembler on the
frozen features, both branches zero-shot), logit and feature; adapter + ensembler, logit and
feature (= the TFA-LT rows, not trained twice).

On a cache without text features (or with ``--text-source class-mean``) zero-shot cannot
run: the row is then a nearest-class-mean classifier fitted on training labels and is named
so ("Nearest class mean (no text)"), never "CLIP zero-shot"; tables.md says why.

The paper has no code; the mappings are our reading of its text (DESIGN.md §1, issue 11).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from featcache.cache import open_cache
from featcache.knob_fields import knob_field
from featcache.pipelines import tfa_lt, train_head
from featcache.runs import (
    markdown_table,
    read_run,
    refuse_existing_run,
    run_name,
    runs_frame,
    with_provenance,
    write_json,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of a reproduction; training defaults are the paper's (DESIGN.md §1).

    ``epochs``/``ensemble_epochs``: TFA-LT's stage I / stage II (200 / 100), also the
    adapter-only ablation's epochs; ``baseline_epochs``: the SGD-trained comparison methods
    of Table 1 (CE, Focal), 300 in the paper. ``rus``: stage I's RUS set, ``fixed`` (the
    paper's generated set, default) or ``fresh`` (a new draw each epoch).
    """

    cache: str
    seeds: tuple[int, ...] = knob_field("seeds")
    epochs: int = knob_field("epochs")
    ensemble_epochs: int = knob_field("ensemble_epochs")
    baseline_epochs: int = knob_field("baseline_epochs")
    batch_size: int = knob_field("batch_size")
    lr: float = knob_field("lr")
    protocol: str | None = knob_field("protocol")
    tau: float | None = knob_field("tau")
    text_source: str = knob_field("text_source")
    feature: str = knob_field("feature")
    tte: bool = knob_field("tte")
    rus: str = knob_field("rus")
    device: str = knob_field("device")
    precision: str = knob_field("precision")
    out: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        self.tfa("logit", Path("x"))  # validates every shared knob once
        self.head("x", "linear", "ce", Path("x"), epochs=self.baseline_epochs)

    def common(self) -> dict:
        """Settings every row shares."""
        return dict(cache=self.cache, seeds=self.seeds, batch_size=self.batch_size, lr=self.lr,
                    protocol=self.protocol, tau=self.tau, text_source=self.text_source,
                    feature=self.feature, tte=self.tte, device=self.device,
                    precision=self.precision)

    def head(self, method: str, head: str, loss: str, out: Path, *, epochs: int | None = None,
             sampler: str = "instance") -> train_head.TrainHeadConfig:
        """The config of a single-head row (``epochs`` defaults to stage I's)."""
        return train_head.TrainHeadConfig(head=head, loss=loss, sampler=sampler,
                                          epochs=self.epochs if epochs is None else epochs,
                                          method=method, out=str(out), **self.common())

    def tfa(self, ensemble: str, out: Path, *, adapters: bool = True, method: str = "") -> tfa_lt.TfaLtConfig:
        """The config of a TFA-LT row (or ablation)."""
        return tfa_lt.TfaLtConfig(ensemble=ensemble, adapters=adapters, epochs=self.epochs,
                                  ensemble_epochs=self.ensemble_epochs, rus=self.rus,
                                  method=method, out=str(out), **self.common())

    def plan(self, out: Path, *, text: bool = True) -> dict[str, object]:
        """Every row's run config (row name -> TrainHeadConfig | TfaLtConfig), in run order.
        ``text=False`` (no text features): the zero-shot row is the nearest class mean."""
        zs = ZERO_SHOT if text else NO_TEXT
        return {
            zs: self.head(zs, "zeroshot", "ce", out / _slug(zs), epochs=0),
            "CLIP linear probe": self.head("CLIP linear probe", "logreg", "ce",
                                           out / _slug("CLIP linear probe")),
            "CE": self.head("CE", "linear", "ce", out / "ce", epochs=self.baseline_epochs),
            "Focal": self.head("Focal", "linear", "focal", out / "focal",
                               epochs=self.baseline_epochs),
            "TFA-LT (logit)": self.tfa("logit", out / "tfa-lt-logit", method="TFA-LT (logit)"),
            "TFA-LT (feature)": self.tfa("feature", out / "tfa-lt-feature",
                                         method="TFA-LT (feature)"),
            "Adapter only": self.head("Adapter only", "adapter", "ce", out / "adapter-only",
                                      epochs=self.epochs, sampler="instance"),
            "Ensembler only (logit)": self.tfa("logit", out / "ensembler-only-logit",
                                               adapters=False, method="Ensembler only (logit)"),
            "Ensembler only (feature)": self.tfa("feature", out / "ensembler-only-feature",
                                                 adapters=False,
                                                 method="Ensembler only (feature)"),
        }


ZERO_SHOT = "CLIP zero-shot"
NO_TEXT = "Nearest class mean (no text)"


@dataclass(frozen=True)
class Row:
    """One row of the paper's tables: where it is shown, how featcache runs it, and what in
    the paper (or the source it cites) the mapping rests on."""

    name: str
    tables: tuple[str, ...]
    mapping: str
    paper: str
    same_as: str | None = None  # shown from another row's run (not trained twice)


# The paper's text is paraphrased where noted (DESIGN.md §1 and issue 11 summarise it);
# quotations are marked with quotation marks.
ROWS: tuple[Row, ...] = (
    Row(ZERO_SHOT, ("Table 1", "Table 2"),
        "head zeroshot: cos(f_v, f_t^c) / tau to the text features of the cache's prompts, "
        "no training (Table 2's first row is the same run).",
        "Table 1 baseline 'CLIP zero-shot' and Table 2's first row (neither adapter nor "
        "ensembler): the frozen CLIP encoders with the prompt 'The category of this "
        "{data_type} image is {class_name}.' (paraphrase, DESIGN.md §1)."),
    Row("CLIP linear probe", ("Table 1",),
        "head logreg: multinomial L2 logistic regression by L-BFGS (max 1,000 iterations) on "
        "the frozen features; C swept by CLIP's parametric binary search over [1e-6, 1e6] on a "
        "stratified 20 % validation split carved from each seed's training rows (balanced "
        "accuracy), then refit on all training rows.",
        "CLIP's linear-probe protocol, Radford et al. 2021, appendix A.3: \"we use "
        "scikit-learn's L-BFGS implementation, with maximum 1,000 iterations\" and \"determine "
        "the L2 regularization strength λ using a hyperparameter sweep on the validation "
        "sets\"; without a validation split \"we randomly split the training dataset\"."),
    Row("CE", ("Table 1",),
        "head linear (W f + b) on the frozen features, loss ce, instance sampling, SGD "
        "(lr 0.1, momentum 0.9, wd 5e-4, batch 128, cosine) for baseline_epochs (300).",
        "Table 1's loss baseline 'CE' on the same frozen encoder; it is not the TFA-LT adapter "
        "(the paper's CE row, ISIC 45.24 / APTOS 52.39, differs from its unbalanced-adapter "
        "row, 66.19 / 61.60); comparison methods train 300 epochs (paraphrase, issue 11)."),
    Row("Focal", ("Table 1",),
        "head linear, loss focal (γ = 2), otherwise as CE.",
        "Table 1's loss baseline 'Focal' (focal loss, γ = 2 as the paper's ensembler), "
        "300 epochs (paraphrase, issue 11)."),
    Row("TFA-LT (logit)", ("Table 1",),
        "TFA-LT: stage I two residual adapters, WRS and RUS (rus = fixed by default), CE, "
        "epochs (200); stage II logit-wise ensembler K([l_w; l_r]), focal γ = 2, "
        "ensemble_epochs (100).",
        "The method: \"a two-stage training strategy, integrating representations from the "
        "foundation model using just two linear adapters and a single ensembler\" (abstract); "
        "WRS and RUS re-balanced sets, logit-wise ensembler (DESIGN.md §1)."),
    Row("TFA-LT (feature)", ("Table 1",),
        "As TFA-LT (logit) with the feature-wise ensembler cos(K([f_w; f_r]), f_t) / tau.",
        "The feature-wise variant of the ensembler (DESIGN.md §1)."),
    Row("Adapter only", ("Table 2",),
        "ONE residual adapter (head adapter) trained on the long-tailed training set without "
        "balancing (instance sampling), CE, stage-I epochs (200), no ensembler.",
        "Table 2 'Adapter only': an adapter trained without balancing the training set "
        "(paraphrase, issue 11); not the mean of the two balanced adapters."),
    Row("Ensembler only (logit)", ("Table 2",),
        "TFA-LT with adapters = False: both branches are the frozen features (zero-shot "
        "logits), logit-wise ensembler trained as in stage II.",
        "Table 2 'Ensembler only': the ensembler without the adapters (paraphrase)."),
    Row("Ensembler only (feature)", ("Table 2",),
        "As ensembler only (logit), feature-wise ensembler.",
        "Table 2 'Ensembler only', feature-wise (paraphrase)."),
    Row("Adapter + ensembler (logit)", ("Table 2",),
        "The TFA-LT (logit) run of Table 1 (not trained twice).",
        "Table 2's full method, logit-wise = TFA-LT (logit).", same_as="TFA-LT (logit)"),
    Row("Adapter + ensembler (feature)", ("Table 2",),
        "The TFA-LT (feature) run of Table 1 (not trained twice).",
        "Table 2's full method, feature-wise = TFA-LT (feature).", same_as="TFA-LT (feature)"),
)
NO_TEXT_NOTE = (
    "The cache has no text features (or --text-source class-mean was given), so zero-shot "
    "classification from CLIP's text features cannot run. The row named '" + NO_TEXT + "' is "
    "a nearest-class-mean classifier fitted on each seed's training labels: not zero-shot, and not the paper's row. "
    "The TFA-LT rows' prototypes are class means too (not text-guided)."
)

NO_TEXT_ROW = Row(
    NO_TEXT, ("Table 1", "Table 2"),
    "head zeroshot with class-mean prototypes: cosine to each class's mean training feature "
    "/ tau (a nearest-class-mean classifier fitted on training labels), no other training.",
    "Not a row of the paper: its zero-shot row needs text features, which this cache lacks "
    "(shown in the zero-shot row's place so the tables keep the paper's layout).")

TABLE1 = tuple(r.name for r in ROWS if "Table 1" in r.tables)
TABLE2 = tuple(r.name for r in ROWS if "Table 2" in r.tables)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def has_text(cfg: ReproduceConfig) -> bool:
    """Whether the zero-shot row can be CLIP zero-shot (the cache has text features and they
    are used)."""
    return cfg.text_source != "class-mean" and open_cache(cfg.cache).text_features is not None


def default_out(cfg: ReproduceConfig) -> Path:
    """``runs/<cache>-reproduce-tfa-lt[-cls][-tte]...``: the settings that differ from the defaults."""
    parts = ["reproduce-tfa-lt"]
    if cfg.feature != "embed":
        parts.append(cfg.feature)
    if cfg.text_source != "auto":
        parts.append(cfg.text_source)
    if cfg.tte:
        parts.append("tte")
    if cfg.rus != "fixed":
        parts.append(f"rus-{cfg.rus}")
    if cfg.protocol:
        parts.append(cfg.protocol)
    return Path("runs") / run_name(Path(cfg.cache).stem, *parts)


def run(cfg: ReproduceConfig, *, progress=None, overwrite: bool = False) -> tuple[Path, pl.DataFrame]:  # noqa: ANN001
    """Run every row (each its own run directory under ``rows/``); write tables and parquet.

    Returns the output directory and the table (one row per paper row, mean ± std columns).
    ``progress(name)`` is called before each row when given. An output directory that holds
    a finished reproduction is refused unless ``overwrite`` (then its rows are replaced one
    by one and its tables rewritten).
    """
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    refuse_existing_run(out, overwrite=overwrite)
    text = has_text(cfg)
    zs = ZERO_SHOT if text else NO_TEXT
    plan = cfg.plan(out / "rows", text=text)
    done: dict[str, dict] = {}
    for name, row_cfg in plan.items():
        if progress:
            progress(name)
        # each row's folder under rows/ belongs to this reproduction: a rerun replaces it
        if isinstance(row_cfg, tfa_lt.TfaLtConfig):
            result = tfa_lt.run(row_cfg, overwrite=True)
        else:
            result = train_head.run(row_cfg, overwrite=True)
        done[name] = read_run(result.out_dir)

    def source(r: Row) -> str:
        return zs if r.name in (ZERO_SHOT, NO_TEXT) else (r.same_as or r.name)

    shown = [(NO_TEXT_ROW if r.name == ZERO_SHOT and not text else r,
              zs if r.name == ZERO_SHOT else r.name) for r in ROWS]
    frames = []
    for table in ("Table 1", "Table 2"):
        runs = []
        for r, label in shown:
            if table in r.tables:
                d = dict(done[source(r)])
                d["metrics"] = dict(d["metrics"], method=label)
                runs.append(d)
        frames.append(runs_frame(runs).with_columns(pl.lit(table).alias("table")))
    frame = pl.concat(frames)
    per_seed = pl.concat([pl.read_parquet(Path(done[n]["run"]) / "metrics.parquet") for n in plan])
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# TFA-LT reproduction on {Path(cfg.cache).name}\n",
          f"Frozen features; {len(cfg.seeds)} seeds (mean ± std, %); protocol "
          f"{done['TFA-LT (logit)']['config'].get('protocol')}.\n"]
    if not text:
        md.append(f"\n**Note.** {NO_TEXT_NOTE}\n")
    for table in ("Table 1", "Table 2"):
        md += [f"\n## {table}\n\n", markdown_table(frame.filter(pl.col("table") == table))]
    md.append("\n## What each row is\n\n| Row | featcache | Paper |\n|---|---|---|\n")
    md += [f"| {label} | {r.mapping} | {r.paper} |\n" for r, label in shown]
    (out / "tables.md").write_text("".join(md))
    frame.write_parquet(out / "results.parquet")
    frame.write_csv(out / "results.csv")
    per_seed.write_parquet(out / "metrics.parquet")
    per_seed.write_csv(out / "metrics.csv")
    rows = {label: {"run": done[source(r)]["run"], "tables": list(r.tables), "mapping": r.mapping,
                    "paper": r.paper, "same_as": r.same_as,
                    "settings": {k: done[source(r)]["config"].get(k) for k in
                                 ("pipeline", "head", "loss", "sampler", "ensemble", "adapters",
                                  "epochs", "ensemble_epochs", "rus", "prototypes")
                                 if k in done[source(r)]["config"]}}
            for r, label in shown}
    config = with_provenance(asdict(cfg) | {"pipeline": "reproduce tfa-lt", "rows": rows,
                                            "text_features": text, "notes": [] if text else [NO_TEXT_NOTE]})
    write_json(out / "config.json", config)
    main = done["TFA-LT (logit)"]["metrics"]
    write_json(out / "metrics.json", {**{k: v for k, v in main.items() if k != "per_seed"},
                                      "method": "TFA-LT (logit)", "per_seed": main["per_seed"],
                                      "rows": {label: {k: v for k, v in done[source(r)]["metrics"].items()
                                                       if k != "per_seed"} for r, label in shown}})
    return out, frame
