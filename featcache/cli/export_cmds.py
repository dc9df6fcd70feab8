"""``featcache export``: a run as one self-contained artefact (``.pt2`` or ``.onnx``).

Thin: builds an :class:`featcache.pipelines.export.ExportConfig` and calls its ``run``.
"""

from __future__ import annotations

import click

from featcache.cli import main
from featcache.cli.common import GroupedCommand


@main.command("export", cls=GroupedCommand, examples=(
    "featcache export --run runs/isic-tfa --out isic.pt2",
    "featcache export --run runs/isic-tfa --out isic.onnx",
    "featcache export --run runs/isic-vitb16-lora --out isic-lora.pt2",
))
@click.option("--run", "run_dir", required=True,
              help="A train-head, TFA-LT or LIFT finetune run directory (LIFT: LoRA merged into the attention weights).")
@click.option("--out", required=True,
              help="The artefact: model.pt2 (torch.export; load with torch.export.load) or model.onnx "
                   "(ONNX; load with onnxruntime).")
@click.option("--cache", default=None,
              help="The run's cache, whose metadata names the backbone (default: the one in the run's config.json).")
@click.option("--pretrained", default=None,
              help="For runs whose weights came from a file: that file (its SHA-256 must be the recorded one).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export_cmd(run_dir: str, out: str, cache: str | None, pretrained: str | None, overwrite: bool) -> None:
    """Export a run (image encoder, heads of every seed, normalisation, class names) as one file.

    LIFT finetune runs: every seed's fine-tuned tower (PEFT modules; LoRA merged) and cosine head.

    The artefact takes uint8 images [B, V, 3, S, S] (V = 1, or the 5 TTE crops) and returns
    logits and probabilities [B, C] (means over seeds); its metadata (class names, size,
    mean/std, views) is inside the file. See the README's "Predict and export".
    """
    from featcache.pipelines import export

    result = export.run(export.ExportConfig(run=run_dir, out=out, cache=cache, pretrained=pretrained,
                                            overwrite=overwrite))
    click.echo(f"Wrote {result.out} ({len(result.metadata['class_names'])} classes, input "
               f"{len(result.metadata['views'])}x3x{result.metadata['size']}x{result.metadata['size']} uint8).")
