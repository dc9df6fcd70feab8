"""``featcache export --run RUN --out model.pt2|model.onnx``: one self-contained artefact.

Read top to bottom: load the run (:func:`featcache.heads.saved.load_saved_run`) and the
backbone its cache was extracted with (:func:`featcache.images.backbone_for_cache`: the
recorded weights, checked by hash); put the frozen image encoder, normalisation and every
seed's head into one module (:class:`featcache.heads.saved.RunClassifier`); export it with
``torch.export`` (``.pt2``, loaded with ``torch.export.load``) or torch's own ONNX exporter
(``.onnx``, ``torch.onnx.export(..., dynamo=True)``), with the batch size dynamic. What
loading needs to know -- class names, input size, mean/std (already applied inside),
interpolation, the views, the run -- travels inside the file: ``featcache.json`` in the
``.pt2``'s extra files, ``featcache`` in the ONNX model's metadata.

The artefact's input is uint8 ``[B, V, 3, S, S]`` (V = 1, or 5 TTE crops); its outputs are
``logits`` and ``probs`` ``[B, C]`` (means over seeds, as ``predict`` writes them). Weights
are exported in fp32, whatever precision the cache was extracted in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.heads.saved import RunClassifier, load_saved_run

log = logging.getLogger(__name__)

FORMATS = (".pt2", ".onnx")


@dataclass(frozen=True)
class ExportConfig:
    """``featcache export``: the run, the artefact (suffix chooses the format), the weights."""

    run: str
    out: str
    cache: str | None = None  # the run's cache (default: the one its config.json names)
    pretrained: str | None = None  # the weights file, for runs extracted from a file
    overwrite: bool = False

    def __post_init__(self) -> None:
        if Path(self.out).suffix not in FORMATS:
            raise FeatcacheError(f"--out {self.out}: the artefact must end in .pt2 (torch.export) or "
                                 ".onnx (ONNX).")


@dataclass
class ExportResult:
    """The artefact written and its metadata."""

    out: Path
    metadata: dict


def build_classifier(run_dir: str | Path, *, cache: str | None = None,
                     pretrained: str | None = None) -> tuple[RunClassifier, dict]:
    """The run as one CPU fp32 module (pixels -> logits, probs) and its metadata."""
    from featcache.images import backbone_for_cache
    from featcache.pipelines.lift_run import is_finetune_run

    dev = resolve_device("cpu")
    if is_finetune_run(run_dir):
        return _lift_classifier(Path(run_dir), cache=cache, pretrained=pretrained, dev=dev)
    run = load_saved_run(run_dir, dev)
    source = run.source_cache(cache)
    backbone, prep, _ = backbone_for_cache(source.meta, pretrained=pretrained, views=run.views, device=dev)
    module = RunClassifier(backbone.visual.float(), run, prep.mean, prep.std).eval().requires_grad_(False)
    metadata = _metadata(
        class_names=source.class_names, class_ids=run.class_ids, centre="standard view", prep=prep,
        interpolation=prep.interpolation, resize_mode=prep.resize_mode, resize=prep.resize,
        resize_to=prep.size,  # the shorter side before the centre crop (standard view)
        views=run.views, model=source.meta["model"], weights_id=source.meta["weights_id"],
        run_dir=run_dir, seeds=[s.seed for s in run.seeds])
    return module, metadata


def _lift_classifier(run_dir: Path, *, cache: str | None, pretrained: str | None,
                     dev: torch.device) -> tuple[torch.nn.Module, dict]:
    """A LIFT (finetune) run: every seed's fine-tuned tower (LoRA merged into the attention
    weights; AdaptFormer, adapters and VPT prompts stay modules) and cosine head, with LIFT's
    eval preprocessing constants (:mod:`featcache.pipelines.lift_run`)."""
    from featcache.pipelines.lift_run import LiftClassifier, load_lift_run

    run = load_lift_run(run_dir, cache=cache)
    backbone, prep, _ = run.backbone(pretrained, dev)
    towers = [run.seed_model(backbone, k, dev, merge=True) for k in range(len(run.seeds))]
    module = LiftClassifier(towers, prep.mean, prep.std).eval().requires_grad_(False)
    S, method = prep.size, run.method
    tte = run.views != ("standard",)
    metadata = _metadata(
        class_names=run.class_names, class_ids=run.class_ids, centre="LIFT's centre view", prep=prep,
        interpolation="bilinear", resize_mode="shortest", resize="scale",
        resize_to=S * 8 // 7,  # LIFT's test transform: Resize(S*8//7) + CenterCrop(S)
        views=run.views, model=run.config["model"], weights_id=run.config["weights_id"],
        run_dir=run_dir, seeds=[s.seed for s in run.seeds],
        eval_transform=(f"Resize({S + prep.tte_expand}, bilinear) + FiveCrop({S})" if tte
                        else f"Resize({S * 8 // 7}, bilinear) + CenterCrop({S})"),
        pipeline="finetune",
        method={"name": method.name, **dataclasses.asdict(method)},
        merged="LoRA deltas merged into the attention weights" if method.name == "lora" else None)
    return module, metadata


def _metadata(*, class_names: list[str], class_ids: list[str], centre: str, prep: object,
              interpolation: str, resize_mode: str, resize: str, resize_to: int, views: tuple[str, ...],
              model: str, weights_id: str, run_dir: str | Path, seeds: list[int], **extra: object) -> dict:
    """The artefact's ``featcache.json``: what a user needs to feed it pixels and read its
    outputs without featcache (class names, the preprocessing constants, the views), and
    where it came from; ``extra`` adds a run kind's own keys (LIFT: its eval transform and
    method)."""
    return {
        "format": "featcache-classifier/1",
        "class_names": list(class_names),
        "class_ids": list(class_ids),
        "input": f"uint8 [B, V, 3, S, S]: V = 1 ({centre}) or 5 (TTE crops)",
        "outputs": ["logits [B, C]: mean over seeds", "probs [B, C]: mean over seeds of softmax"],
        "size": prep.size,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "interpolation": interpolation,
        "resize_mode": resize_mode,
        "resize": resize,
        "resize_to": resize_to,
        "views": list(views),
        "tte_expand": prep.tte_expand,
        "model": model,
        "weights_id": weights_id,
        "run": str(Path(run_dir)),
        "seeds": seeds,
        **extra,
    }


def run(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.run`` to ``cfg.out`` (``.pt2`` or ``.onnx``)."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FeatcacheError(f"{out} already exists; choose another --out or pass --overwrite.")
    module, metadata = build_classifier(cfg.run, cache=cfg.cache, pretrained=cfg.pretrained)
    V, S = len(metadata["views"]), metadata["size"]
    example = torch.randint(0, 256, (2, V, 3, S, S), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.tmp{out.suffix}")  # torch.export.save wants a .pt2 name
    with torch.no_grad():
        if out.suffix == ".pt2":
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, tmp, extra_files={"featcache.json": json.dumps(metadata)})
        else:
            try:
                onnx_program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                                 input_names=["views"], output_names=["logits", "probs"])
            except ImportError as e:
                raise FeatcacheError(f"ONNX export needs the onnx and onnxscript packages ({e}); "
                                     "pip install 'featcache[onnx]'.") from None
            model = onnx_program.model_proto
            entry = model.metadata_props.add()
            entry.key, entry.value = "featcache", json.dumps(metadata)
            import onnx

            onnx.save_model(model, tmp)
    tmp.replace(out)
    log.info("exported %s to %s", cfg.run, out)
    return ExportResult(out, metadata)
