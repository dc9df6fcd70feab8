"""``featcache reproduce tfa-lt``: the rows of TFA-LT's Tables 1 and 2 that run from frozen
features, over 3 seeds, as a markdown table in the paper's layout plus parquet.

Table 1: CLIP zero-shot; CLIP linear probe (``linear`` + CE); CE and Focal (the TFA-LT
residual adapter trained on the long-tailed set with CE / focal γ = 2: the paper's loss
baselines on the same frozen encoder); TFA-LT logit-wise and feature-wise.
Table 2 (ablation): adapter only (the two stage-I adapters, logits averaged, no ensembler);
ensembler only (the ensembler on the frozen features, both branches zero-shot), logit and
feature; adapter + ensembler, logit and feature (= the TFA-LT rows, not trained twice).

These interpretations of the paper's row names are ours (the paper has no code) and are
written into ``config.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from featcache.runs import markdown_table, read_run, runs_frame, write_json
from pipelines import tfa_lt, train_head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of a reproduction; training defaults are the paper's (DESIGN.md §1)."""

    cache: str
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 200
    ensemble_epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    protocol: str | None = None
    tau: float | None = None
    text_source: str = "auto"
    feature: str = "embed"
    tte: bool = False
    device: str = "auto"
    precision: str = "fp32"
    out: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        self.tfa("logit", Path("x"))  # validates every shared knob once

    def common(self) -> dict:
        """Settings every row shares."""
        return dict(cache=self.cache, seeds=self.seeds, batch_size=self.batch_size, lr=self.lr,
                    protocol=self.protocol, tau=self.tau, text_source=self.text_source,
                    feature=self.feature, tte=self.tte, device=self.device,
                    precision=self.precision)

    def head(self, method: str, head: str, loss: str, out: Path) -> train_head.TrainHeadConfig:
        """The config of a single-head row."""
        return train_head.TrainHeadConfig(head=head, loss=loss, epochs=self.epochs, method=method,
                                          out=str(out), **self.common())

    def tfa(self, ensemble: str, out: Path, *, adapters: bool = True, method: str = "") -> tfa_lt.TfaLtConfig:
        """The config of a TFA-LT row (or ablation)."""
        return tfa_lt.TfaLtConfig(ensemble=ensemble, adapters=adapters, epochs=self.epochs,
                                  ensemble_epochs=self.ensemble_epochs, method=method,
                                  out=str(out), **self.common())


TABLE1 = ("CLIP zero-shot", "CLIP linear probe", "CE", "Focal", "TFA-LT (logit)", "TFA-LT (feature)")
TABLE2 = ("Adapter only", "Ensembler only (logit)", "Ensembler only (feature)",
          "Adapter + ensembler (logit)", "Adapter + ensembler (feature)")


def run(cfg: ReproduceConfig, *, progress=None) -> tuple[Path, pl.DataFrame]:  # noqa: ANN001
    """Run every row (each its own run directory under ``rows/``); write tables and parquet.

    Returns the output directory and the table (one row per paper row, mean ± std columns).
    ``progress(name)`` is called before each row when given.
    """
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{Path(cfg.cache).stem}-reproduce-tfa-lt"
    rows = out / "rows"

    def slug(name: str) -> Path:
        return rows / "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")

    # each row's folder under rows/ belongs to this reproduction: a rerun replaces it
    plan = {
        "CLIP zero-shot": lambda p: train_head.run(cfg.head("CLIP zero-shot", "zeroshot", "ce", p), overwrite=True),
        "CLIP linear probe": lambda p: train_head.run(cfg.head("CLIP linear probe", "linear", "ce", p), overwrite=True),
        "CE": lambda p: train_head.run(cfg.head("CE", "adapter", "ce", p), overwrite=True),
        "Focal": lambda p: train_head.run(cfg.head("Focal", "adapter", "focal", p), overwrite=True),
        "TFA-LT (logit)": lambda p: tfa_lt.run(cfg.tfa("logit", p, method="TFA-LT (logit)")),
        "TFA-LT (feature)": lambda p: tfa_lt.run(cfg.tfa("feature", p, method="TFA-LT (feature)")),
        "Adapter only": lambda p: tfa_lt.run(cfg.tfa("mean", p, method="Adapter only")),
        "Ensembler only (logit)": lambda p: tfa_lt.run(
            cfg.tfa("logit", p, adapters=False, method="Ensembler only (logit)")),
        "Ensembler only (feature)": lambda p: tfa_lt.run(
            cfg.tfa("feature", p, adapters=False, method="Ensembler only (feature)")),
    }
    same_as = {"Adapter + ensembler (logit)": "TFA-LT (logit)",
               "Adapter + ensembler (feature)": "TFA-LT (feature)"}
    done: dict[str, dict] = {}
    for name, fn in plan.items():
        if progress:
            progress(name)
        result = fn(slug(name))
        done[name] = read_run(result.out_dir)
    frames = []
    for table, names in (("Table 1", TABLE1), ("Table 2", TABLE2)):
        runs = []
        for name in names:
            r = dict(done[same_as.get(name, name)])
            r["metrics"] = dict(r["metrics"], method=name)
            runs.append(r)
        frames.append(runs_frame(runs).with_columns(pl.lit(table).alias("table")))
    frame = pl.concat(frames)
    per_seed = pl.concat([pl.read_parquet(Path(done[n]["run"]) / "metrics.parquet") for n in plan])
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# TFA-LT reproduction on {Path(cfg.cache).name}\n",
          f"Frozen features; {len(cfg.seeds)} seeds (mean ± std, %); protocol "
          f"{done['TFA-LT (logit)']['config'].get('protocol')}.\n"]
    for table in ("Table 1", "Table 2"):
        md += [f"\n## {table}\n\n", markdown_table(frame.filter(pl.col("table") == table))]
    (out / "tables.md").write_text("".join(md))
    frame.write_parquet(out / "results.parquet")
    frame.write_csv(out / "results.csv")
    per_seed.write_parquet(out / "metrics.parquet")
    per_seed.write_csv(out / "metrics.csv")
    config = asdict(cfg) | {"pipeline": "reproduce tfa-lt", "rows": {
        n: done[same_as.get(n, n)]["run"] for n in TABLE1 + TABLE2},
        "row_definitions": __doc__}
    write_json(out / "config.json", config)
    main = done["TFA-LT (logit)"]["metrics"]
    write_json(out / "metrics.json", {**{k: v for k, v in main.items() if k != "per_seed"},
                                      "method": "TFA-LT (logit)", "per_seed": main["per_seed"],
                                      "rows": {n: {k: v for k, v in done[same_as.get(n, n)]["metrics"].items()
                                                   if k != "per_seed"} for n in TABLE1 + TABLE2}})
    return out, frame
