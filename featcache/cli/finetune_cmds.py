"""``featcache finetune``: LIFT fine-tuning (DESIGN.md §2); a thin layer over :mod:`featcache.pipelines.finetune`."""

from __future__ import annotations

import click

from featcache import knobs
from featcache.cli import main
from featcache.cli.choices import NameChoice
from featcache.cli.common import GroupedCommand, parse_pairs, parse_seeds, plot_format_option
from featcache.device import DEVICES, PRECISIONS


@main.command("finetune", cls=GroupedCommand, groups={
    "Data and splits": ["--dataset", "--root", "--option", "--cache", "--protocol", "--test-per-class", "--seeds",
                        "--no-augment", "--train-canvas"],
    "Model and method": ["--model", "--pretrained", "--method", "--method-option", "--init", "--sigma"],
    "Long tail: loss": ["--loss", "--la-tau"],
    "Optimisation": ["--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay", "--schedule",
                     "--precision"],
    "Evaluation": ["--tte"],
    "Output and device": ["--out", "--resume", "--overwrite", "--plot-format", "--device", "--workers",
                          "--no-progress"],
}, examples=(
    "featcache finetune --dataset cifar100-lt --root data/cifar100 --option imbalance=100 "
    "--model ViT-B-16 --pretrained openai --method adaptformer",
    "torchrun --nproc_per_node=4 -m featcache finetune --dataset isic2018 --root data/ISIC2018 "
    "--model ViT-B-16 --pretrained openai --method lora --method-option rank=8 --tte",
    "featcache finetune --method classifier --cache caches/isic2018-ViT-B-16-openai.h5 --seeds 0,1,2",
))
@click.option("--dataset", default=None, help="Data set name (see `featcache datasets`).")
@click.option("--root", type=click.Path(), default=None, help="Folder holding the data set.")
@click.option("--option", "options", multiple=True, help="Data set option KEY=VALUE (repeatable), e.g. imbalance=100.")
@click.option("--method", default=knobs.FINETUNE_METHOD, show_default=True, type=NameChoice("fine-tuning method"), help="What is trained besides the classifier: a PEFT module (adaptformer, adapter, lora, vpt-*), bias terms (bitfit), everything (full) or nothing (classifier).")
@click.option("--method-option", "method_options", multiple=True, help="Method option KEY=VALUE (repeatable), e.g. bottleneck=16.")
@click.option("--cache", default=None, type=click.Path(), help="With --method classifier: train the head on this cache's un-augmented features (one fixed view per image; run label 'classifier-cached'). LIFT's classifier baseline augments every epoch: omit --cache and pass --dataset/--root for that.")
@click.option("--model", default=knobs.FINETUNE_MODEL, show_default=True, help="open_clip model name (LIFT: ViT-B-16 --pretrained openai; with a local OpenAI checkpoint FILE: ViT-B-16-quickgelu --pretrained FILE).")
@click.option("--pretrained", default=None, help="Pretrained tag, checkpoint FILE, hf-hub:ID or 'random' [default: model's default]. Tags trained with QuickGELU (e.g. openai, dfn2b, metaclip_fullcc) are built with it. A local OpenAI checkpoint needs the -quickgelu model name: --model ViT-B-16-quickgelu --pretrained FILE (OpenAI's original ViT-B-16.pt is recognised by its SHA-256 and needs nothing extra).")
@click.option("--protocol", default=None, type=NameChoice("protocol"), help="Train/test split: lift (LIFT's groups by training count), official (the data set's own splits) or tfa-lt (a class-balanced test set drawn per seed) [default: lift when the data set has a test split].")
@click.option("--test-per-class", type=int, default=None, help="Test images per class for --protocol tfa-lt.")
@click.option("--seeds", default=knobs.seeds_text(knobs.FINETUNE_SEEDS), show_default=True, help="Comma-separated seeds; one run each.")
@click.option("--epochs", type=int, default=None, help="Training epochs [default: the data set's LIFT recipe: 20 for inat2018, else 10].")
@click.option("--batch-size", type=int, default=knobs.BATCH_SIZE, show_default=True, help="Global batch (split over torchrun processes).")
@click.option("--lr", type=float, default=knobs.FINETUNE_LR, show_default=True, help="SGD learning rate (LIFT: 0.01).")
@click.option("--momentum", type=float, default=knobs.MOMENTUM, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, default=knobs.WEIGHT_DECAY, show_default=True, help="SGD weight decay.")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default=knobs.SCHEDULE, show_default=True, help="Learning rate over the epochs: cosine annealing to 0, or constant.")
@click.option("--loss", default=knobs.FINETUNE_LOSS, show_default=True, type=NameChoice("loss"), help="Training loss (LIFT: la, logit-adjusted; bce is multi-label and refused here).")
@click.option("--la-tau", type=float, default=knobs.LA_TAU, show_default=True, help="τ of the logit-adjusted loss.")
@click.option("--sigma", type=float, default=knobs.SIGMA, show_default=True, help="Scale of the cosine classifier.")
@click.option("--init", type=click.Choice(["text", "random"]), default=knobs.FINETUNE_INIT, show_default=True, help="Head init: semantic-aware (text) or random.")
@click.option("--no-augment", is_flag=True, help="Train on centre crops (no RandomResizedCrop + flip).")
@click.option("--train-canvas", type=int, default=None, help="Speed option, not LIFT: shrink image files so the longer side fits N pixels, then crop on the device [default: off; LIFT's RandomResizedCrop of the full image in the workers].")
@click.option("--tte", is_flag=True, help="Also evaluate with test-time ensembling (five crops, logits averaged).")
@click.option("--out", type=click.Path(), default=None, help="Run directory [default: runs/<dataset>-<model>-<method>].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its checkpoints.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (its files are deleted before training).")
@click.option("--device", type=click.Choice(DEVICES), default=knobs.DEVICE, show_default=True, help="auto = CUDA when present, else the CPU.")
@click.option("--precision", type=click.Choice(("auto", *PRECISIONS)), default=knobs.FINETUNE_PRECISION, show_default=True, help="auto = bf16 on GPU, fp32 on CPU.")
@click.option("--workers", type=int, default=None, help="Decoding processes for image files per rank [default: this node's CPUs / its ranks, at most 16].")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@plot_format_option
def finetune_cmd(dataset, root, options, method, method_options, cache, model, pretrained, protocol, test_per_class, seeds, epochs, batch_size, lr, momentum, weight_decay, schedule, loss, la_tau, sigma, init, no_augment, train_canvas, tte, out, resume, overwrite, device, precision, workers, no_progress, plot_format) -> None:  # noqa: ANN001
    """Fine-tune the image encoder lightly (LIFT) and evaluate; writes a run directory.

    Runs under `torchrun --nproc_per_node=N -m featcache finetune ...` (DistributedDataParallel).
    `--method classifier --cache C.h5` trains LIFT's head on cached, un-augmented features
    instead (labelled classifier-cached); without --cache, `--method classifier` augments every
    epoch as LIFT's classifier baseline does.
    """
    from featcache.distributed import dist_info
    from featcache.pipelines.finetune import FinetuneConfig, run
    from featcache.runs import runs_frame
    from featcache.tables import print_runs

    cfg = FinetuneConfig(
        dataset=dataset, root=root, dataset_options=parse_pairs(options, "--option"), method=method,
        method_options=parse_pairs(method_options, "--method-option"), cache=cache, model=model,
        pretrained=pretrained, protocol=protocol, test_per_class=test_per_class, seeds=parse_seeds(seeds),
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, loss=loss, la_tau=la_tau, sigma=sigma, init=init, augment=not no_augment,
        train_canvas=train_canvas, tte=tte, out=out, resume=resume, device=device, precision=precision, workers=workers,
        progress=not no_progress, plot_format=plot_format,
    )
    from featcache.progress import quiet

    with quiet(no_progress):  # also the head-training bars of --method classifier --cache
        result = run(cfg, overwrite=overwrite)
    if dist_info()[0] != 0 or not result.metrics:
        return
    from featcache.cli.common import console

    metrics, config = result.metrics, result.config
    if "trainable_params" in metrics:
        share = metrics["trainable_params"] / max(metrics["total_params"], 1)
        click.echo(
            f"Trainable parameters: {metrics['trainable_params']:,} of {metrics['total_params']:,} "
            f"({100 * share:.3f} %; backbone {metrics['backbone_trainable_params']:,}, head {metrics['head_params']:,})."
        )
    label = config.get("method") or method
    rows = [{"run": str(result.out_dir), "metrics": {**metrics, "method": label + (" + TTE" if tte else "")}}]
    if "no_tte" in metrics:
        rows.append({"run": str(result.out_dir), "metrics": {**metrics["no_tte"], "method": label, "per_seed": metrics.get("per_seed", [])}})
    print_runs(console(), runs_frame(rows), title=f"{label} on {config.get('dataset') or cache}")
    click.echo(f"Wrote run directory {result.out_dir}")
