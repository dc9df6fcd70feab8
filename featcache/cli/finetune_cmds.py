"""``featcache finetune``: LIFT fine-tuning (DESIGN.md §2); a thin layer over :mod:`featcache.pipelines.finetune`."""

from __future__ import annotations

import click

from featcache.cli import main
from featcache.cli.common import (
    GroupedCommand,
    knob_option,
    parse_pairs,
    parse_seeds,
    plot_format_option,
)


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
@knob_option("finetune_method")
@click.option("--method-option", "method_options", multiple=True, help="Method option KEY=VALUE (repeatable), e.g. bottleneck=16.")
@click.option("--cache", default=None, type=click.Path(), help="With --method classifier: train the head on this cache's un-augmented features (one fixed view per image; run label 'classifier-cached'). LIFT's classifier baseline augments every epoch: omit --cache and pass --dataset/--root for that.")
@knob_option("finetune_model")
@knob_option("pretrained")
@knob_option("finetune_protocol")
@knob_option("test_per_class")
@knob_option("finetune_seeds")
@knob_option("finetune_epochs")
@knob_option("batch_size", note="Fine-tuning: the global batch, split over torchrun processes.")
@knob_option("finetune_lr")
@knob_option("momentum")
@knob_option("weight_decay")
@knob_option("finetune_schedule")
@knob_option("finetune_loss")
@knob_option("la_tau")
@knob_option("sigma")
@knob_option("finetune_init")
@click.option("--no-augment", is_flag=True, help="Train on centre crops (no RandomResizedCrop + flip).")
@knob_option("train_canvas")
@knob_option("tte")
@click.option("--out", type=click.Path(), default=None, help="Run directory [default: runs/<dataset>-<model>-<method>].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its checkpoints.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (its files are deleted before training).")
@knob_option("device_choice")
@knob_option("encoder_precision")
@knob_option("workers")
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
