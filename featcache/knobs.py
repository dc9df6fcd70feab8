"""Every knob of featcache, declared once: its name, default, type or choices, help and source.

A knob is one setting a user can change: a config field and, where a command offers it, its
command-line option. Each is declared here exactly once, by :func:`_declare`, as a
:class:`Knob` record in :data:`KNOBS`, and its default is also bound to a module constant
(``LR = 0.1``) for the code that reads a default directly. From these records

- the CLI builds its options (:func:`featcache.cli.common.knob_option`: flag, type or
  choices, default, help);
- the configs take their field defaults, help and source
  (:func:`featcache.knob_fields.knob_field`, field metadata ``"knob"``);
- ``docs/KNOBS.md`` is checked (``tests/test_knobs_doc.py``).

``tests/test_knob_defaults.py`` checks that every command's knob options and every config
field agree with the records, and that no config field, option or function argument writes a
knob's default as a literal elsewhere.

Adding a knob: one ``_declare`` call below (key, default, help, source), a
``knob_field("key")`` in the config and a ``knob_option("key")`` on each command that offers
it. ``key`` is the record's own name; ``name`` (default: the key) is the config field and the
option (``--weight-decay`` is ``weight_decay``); two records may share a name when commands
give it different defaults (``lr``: 0.1 for the heads, ``finetune_lr`` 0.01 for LIFT).

Why a module of records and not the configs themselves: the configs live in modules that
import torch, and ``featcache --help`` must not (``tests/test_fast_cli.py``). This module
imports nothing, so the CLI reads the same records at no cost. Library modules only: it
never imports the heads, the pipelines or the CLI.

Derived defaults are resolved in one place each: τ = 1/logit_scale of the cache
(:attr:`featcache.cache.FeatureCache.default_tau`, read through
:meth:`featcache.heads.cached.CachedData.tau_for`), the split protocol by the cache's
descriptor (:func:`featcache.splits.resolve_protocol`), a fine-tuning run's epochs by the
data set's LIFT recipe (``featcache.pipelines.finetune``, ``LIFT_EPOCHS``), a grid's
``val_fraction`` by :data:`GRID_VAL_FRACTION` (``featcache.pipelines.grid``), the MedMNIST
benchmark's ``None`` knobs by its recipe (``featcache.pipelines.bench_medmnist.RECIPES``).
"""

from __future__ import annotations


class Knob:
    """One knob: ``key`` (its record's name), ``name`` (config field and CLI option),
    ``default`` (the config's value; ``None`` = derived, see ``help``), ``type`` (``int``,
    ``float``, ``str``, ``bool`` for a flag, ``tuple`` for a comma list of ``item``, or
    ``"path"``), ``choices`` (a fixed tuple of values) or ``names`` (the kind of registry
    names, :data:`featcache.cli.choices.SOURCES`), ``help`` (the option's text), ``source``
    (what the default rests on: a paper, a code line, a DESIGN.md section, or featcache's own
    choice), ``metavar`` and ``cli_text`` (how the CLI spells a default it parses, e.g.
    ``auto`` for an empty tuple)."""

    __slots__ = ("key", "name", "default", "type", "item", "choices", "names", "help", "source",
                 "metavar", "cli_text")

    def __init__(self, key: str, default: object, help: str, source: str, *, name: str | None = None,  # noqa: A002
                 type: object = None, item: type | None = None, choices: tuple[str, ...] | None = None,  # noqa: A002
                 names: str | None = None, metavar: str | None = None, cli_text: str | None = None) -> None:
        if type is None:
            if default is None:
                raise ValueError(f"knob {key}: a None default needs its type")
            type = builtins_type(default)  # noqa: A001
        if type is tuple and item is None:
            item = builtins_type(default[0]) if default else str
        self.key, self.name, self.default = key, name or key, default
        self.type, self.item, self.choices, self.names = type, item, choices, names
        self.help = help.replace("{default}", str(default))
        self.source, self.metavar, self.cli_text = source, metavar, cli_text

    @property
    def cli_default(self) -> object:
        """The default as the command line spells it: a tuple as its comma list (``0,1,2``)."""
        if self.cli_text is not None:
            return self.cli_text
        if self.type is tuple and self.default is not None:
            return ",".join(str(v) for v in self.default)
        return self.default

    def __repr__(self) -> str:
        return f"Knob({self.key!r}, {self.default!r})"


def builtins_type(value: object) -> type:
    """``type(value)`` (kept a function: the records' ``type`` argument shadows the builtin)."""
    return value.__class__


KNOBS: dict[str, Knob] = {}


def _declare(key: str, default: object, help: str, source: str, **kw: object) -> object:  # noqa: A002
    """Record one knob (each key once) and return its default, for its module constant."""
    if key in KNOBS:
        raise ValueError(f"knob {key} is declared twice")
    KNOBS[key] = Knob(key, default, help, source, **kw)
    return default


def knob(key: str) -> Knob:
    """The record of ``key``, failing with the declared keys when there is none."""
    try:
        return KNOBS[key]
    except KeyError:
        raise KeyError(f"no knob {key!r} in featcache.knobs; declared: {', '.join(sorted(KNOBS))}") from None


def seeds_text(seeds: tuple[int, ...]) -> str:
    """``(0, 1, 2)`` -> ``"0,1,2"``: a seeds default as the CLI's ``--seeds`` text."""
    return ",".join(str(s) for s in seeds)


_TFA = "TFA-LT (DESIGN.md §1)"
_LIFT = "LIFT (DESIGN.md §2)"
_FMMIC = "FMMIC's MedMNIST benchmark (DESIGN.md §3)"

# -- What is trained
HEAD = _declare(
    "head", "linear",
    "Head to train (default {default}; logreg = CLIP's L-BFGS linear probe; few-shot heads: README).",
    "featcache: the plain frozen-feature probe; HEADS lists all", names="head")
COMPARE_HEADS: tuple[str, ...] = _declare(
    "compare_heads", ("zeroshot", "knn", "logreg", "tip-adapter", "clip-adapter", "lp++", "clap", "linear",
                      "cosine", "tfa-lt"),
    "Comma-separated methods: registered heads and tfa-lt.",
    "issue 13: the few-shot heads, the trained probes and TFA-LT", name="heads")
METHOD_LABEL = _declare("method_label", "", "Name shown in tables.",
                        "featcache: empty = the head's (or TFA-LT's) own name", name="method")

# -- Losses, samplers and head initialisation (names in the registries of featcache.heads)
LOSS = _declare(
    "loss", "ce",
    "Training loss: ce cross-entropy, focal, la logit-adjusted, bs balanced softmax, cb class-balanced, "
    "bce binary CE (multi-label).",
    f"{_TFA}: stage I trains with cross-entropy on the cosine logits", names="loss")
SAMPLER = _declare(
    "sampler", "instance",
    "How a single head's training rows are drawn each epoch: instance (every row once), wrs "
    "(class-balanced, with replacement), rus / rus-fixed (random under-sampling, fresh or drawn once), "
    "sqrt (square-root class frequencies).",
    "featcache: every training row once per epoch; wrs / rus are TFA-LT's stage-I streams", names="sampler")
INIT = _declare("init", "random", "Cosine head initialisation.",
                "featcache for --head cosine; text is LIFT's semantic-aware initialisation",
                choices=("random", "text", "class-mean"))
ENSEMBLE = _declare(
    "ensemble", "logit",
    "Run TFA-LT: two stage-I adapters (WRS, RUS), then this ensembler (mean = adapters only).",
    f"{_TFA}: logit / feature are the paper's ensemblers (the CLI runs TFA-LT only with --ensemble)",
    choices=("logit", "feature", "mean"))
ENSEMBLE_LOSS = _declare("ensemble_loss", "focal", "TFA-LT stage II loss.", f"{_TFA}: focal loss in stage II",
                         names="loss")
RUS = _declare(
    "rus", "fixed",
    "TFA-LT stage I RUS: one under-sampled set drawn once (fixed, the paper's) or a fresh draw each epoch.",
    f"{_TFA}: RUS generates one re-balanced training set (our reading of the text)", choices=("fixed", "fresh"))

# -- What a run reads from the cache, and where it runs
TEXT_SOURCE = _declare(
    "text_source", "auto",
    "Class prototypes for zero-shot heads, text init and TFA-LT: prompts = the cache's text embeddings of "
    "the class prompts, class-mean = each class's mean training feature, auto = prompts when the cache has "
    "text features, else class-mean.",
    "TFA-LT uses text features; class means (LIFT's fallback) for caches without text",
    choices=("auto", "prompts", "class-mean"))
TEMPLATE = _declare("template", "auto", "Prompt template: auto|mean|part of one.",
                    "TFA-LT's prompt when the cache has it, else LIFT's 'a photo of a {}.', else the mean")
VIEW = _declare("view", "standard",
                "Cached view to train on (the TTE crops exist in caches extracted with --tte).",
                "the cache's view with the model's own preprocessing", names="view")
FEATURE = _declare("feature", "embed",
                   "Cached feature: embed = the projected (CLIP) embedding, cls = the pre-projection feature.",
                   "TFA-LT works on the projected embeddings; cls is LIFT's pre-projection feature",
                   choices=("embed", "cls"))
TTE = _declare("tte", False, "Evaluate with test-time ensembling: logits averaged over the five crops.",
               "LIFT's test-time ensembling (five crops, logits averaged), off unless asked")
DEVICE = _declare("device", "auto", "auto, cpu, cuda or cuda:N (auto: CUDA when present).",
                  "featcache: CUDA when present, else the CPU")
DEVICE_CHOICE = _declare("device_choice", DEVICE, "auto = CUDA when present, else the CPU.",
                         "featcache: CUDA when present (one device per torchrun rank)", name="device",
                         choices=("auto", "cpu", "cuda"))
PRECISION = _declare(
    "precision", "fp32",
    "Training precision of the heads' weight products: bf16 (or fp16, GPU only) is mixed precision with "
    "fp32 master weights and losses; evaluation is fp32.",
    "featcache: bf16 / fp16 are mixed precision on request (DESIGN.md §6 speed goals)",
    choices=("fp32", "bf16", "fp16"))
ENCODER_PRECISION = _declare(
    "encoder_precision", "auto", "auto = bf16 on GPU, fp32 on CPU.",
    "LIFT trains in mixed precision; featcache.device resolves auto", name="precision",
    choices=("auto", "fp32", "bf16", "fp16"))
CALIBRATE = _declare(
    "calibrate", "none",
    "Post-hoc temperature scaling fitted on the validation split (needs --val-fraction or an official val "
    "split; never on test); ECE/NLL/Brier before and after.",
    "post-hoc temperature scaling (Guo et al. 2017 §4.2), off unless asked", choices=("none", "temperature"))
PLOT_FORMAT = _declare("plot_format", "png",
                       "Figure formats: png (always written), plus pdf and/or svg for a paper, e.g. png,pdf. "
                       "Figures are 150 dpi, never clipped.",
                       "featcache: add pdf / svg for a paper", metavar="FMT[,FMT]")
SELECT = _declare("select", "balanced_acc", "Validation metric that chooses the configuration.",
                  "featcache: the validation figure that suits long-tailed sets", names="selection metric")

# -- Splits and protocols (None: derived from the cache, see the help)
PROTOCOL = _declare(
    "protocol", None,
    "Train/test split: tfa-lt = a class-balanced test set drawn per seed, official = the data set's own "
    "splits, lift = groups by training count.",
    "featcache.splits.resolve_protocol: official if the cache has a test split, else the descriptor's",
    type=str, names="protocol")
TEST_PER_CLASS = _declare("test_per_class", None, "tfa-lt test images per class (default: the descriptor's).",
                          "TFA-LT Table 1: 60 (ISIC 2018), 150 (APTOS 2019), in the descriptors", type=int)
SHOTS = _declare(
    "shots", None,
    "K-shot protocol: K training images per class drawn with the seed (classes with fewer keep all); the "
    "draw is in splits.parquet. Grid: --param shots=1,2,4,8,16.",
    "the few-shot CLIP protocol (CoOp, Tip-Adapter, LP++, CLAP); None = every training row", type=int)
FINETUNE_SCHEDULE = _declare("finetune_schedule", "cosine",
                             "Learning rate over the epochs: cosine annealing to 0, or constant.",
                             f"{_LIFT}: cosine annealing, per epoch", name="schedule",
                             choices=("cosine", "constant"))
FINETUNE_PROTOCOL = _declare(
    "finetune_protocol", None,
    "Train/test split: lift (LIFT's groups by training count), official (the data set's own splits) or "
    "tfa-lt (a class-balanced test set drawn per seed) [default: lift when the data set has a test split].",
    f"{_LIFT}: class groups many > 100, medium 20-100, few < 20", name="protocol", type=str, names="protocol")
COMPARE_SHOTS: tuple[int | None, ...] = _declare(
    "compare_shots", (None,),
    "Comma-separated K-shot values (K training images per class), 'full' for all rows, e.g. 1,2,4,8,16,full.",
    "the few-shot protocol's K = 1, 2, 4, 8, 16; full (None) = every training row", name="shots", item=int,
    cli_text="full")
VALIDATION_FREE = _declare(
    "validation_free", False,
    "Realistic setting: no validation rows; heads that tune on validation use their fixed defaults "
    "(logreg C = 1). config.json records validation: none.",
    "CLAP (Silva-Rodríguez et al. 2024)'s realistic setting, off unless asked")

# -- Optimisation: TFA-LT (DESIGN.md §1): SGD momentum 0.9, weight decay 5e-4, batch 128,
#    lr 0.1 with cosine annealing; 200 epochs stage I, 100 epochs stage II; 3 seeds.
SEEDS: tuple[int, ...] = _declare("seeds", (0, 1, 2), "Comma-separated seeds; mean ± std is reported.",
                                  f"{_TFA}: results averaged over 3 seeds")
EPOCHS = _declare("epochs", 200, "Training epochs.", f"{_TFA}: 200 epochs in stage I")
BATCH_SIZE = _declare("batch_size", 128, "Training rows per optimiser step.", f"{_TFA} and {_LIFT}: batch 128")
LR = _declare("lr", 0.1, "Learning rate.", f"{_TFA}: SGD lr 0.1")
WEIGHT_DECAY = _declare("weight_decay", 5e-4, "Weight decay (SGD: L2 in the gradient; AdamW: decoupled).", f"{_TFA} and {_LIFT}: 5e-4")
MOMENTUM = _declare("momentum", 0.9, "SGD momentum.", f"{_TFA} and {_LIFT}: 0.9")
SCHEDULE = _declare("schedule", "cosine",
                    "Learning rate over training: cosine annealing to 0 (per epoch), constant, or step "
                    "(x --lr-decay every --decay-every optimiser steps, StepLR).",
                    f"{_TFA}: cosine annealing, per epoch", choices=("cosine", "constant", "step"))
LR_DECAY = _declare("lr_decay", 0.9, "Step decay: the learning rate's factor every --decay-every optimiser steps "
                    "(train-head and grid: with --schedule step; bench medmnist: the probe's head).",
                    f"{_FMMIC}: x0.9 (its --lr_decay)")
DECAY_EVERY = _declare("decay_every", 200, "Step decay: optimiser steps between two --lr-decay factors.",
                       f"{_FMMIC}: every 200 iterations")
OPTIMIZER = _declare("optimizer", "sgd",
                     "Optimiser of the heads: sgd (with --momentum) or adamw (torch.optim.AdamW, its "
                     "default betas; --momentum is not used).",
                     f"{_TFA}: SGD with momentum; adamw is the MedMNIST probes' ({_FMMIC})",
                     choices=("sgd", "adamw"))
ENSEMBLE_EPOCHS = _declare("ensemble_epochs", 100, "TFA-LT stage II epochs.", f"{_TFA}: 100 epochs in stage II")
ENSEMBLE_LR = _declare("ensemble_lr", 0.1, "TFA-LT stage II learning rate.",
                       f"{_TFA}: the paper gives one optimiser for both stages")
BASELINE_EPOCHS = _declare("baseline_epochs", 300,
                           "Epochs of the SGD comparison methods (CE, Focal): 300 in the paper.",
                           f"{_TFA}: its Table 1 comparison methods train 300 epochs")

# -- Losses and heads
GAMMA = _declare("gamma", 2.0, "Focal loss γ.", f"{_TFA}: focal γ = 2 (also Lin et al. 2017's default)")
LA_TAU = _declare("la_tau", 1.0, "Logit-adjusted loss τ.", f"{_LIFT}: τ = 1 (Menon et al. 2021)")
CB_BETA = _declare("cb_beta", 0.9999, "Class-balanced loss β.",
                   "Cui et al. 2019's largest β; none of the three papers fixes it")
SIGMA = _declare("sigma", 25.0, "Cosine head scale σ.", f"{_LIFT}: cosine classifier scale σ = 25 (its `scale`)")
TAU = _declare("tau", None, "Cosine-logit temperature (default 1/logit_scale).",
               "TFA-LT does not give τ: CLIP's own temperature, 1/logit_scale of the cache "
               "(FeatureCache.default_tau)", type=float)
# cosine-logit temperature τ where a cache has no logit_scale (imported features) and as the
# placeholder that validates a config whose τ is still None: 1/logit_scale of OpenAI CLIP
# (DESIGN.md §1: 0.01). The real default is the cache's 1/logit_scale (FeatureCache.default_tau).
TAU_FALLBACK = 0.01

# -- Splits and evaluation
VAL_FRACTION = _declare("val_fraction", 0.0, "Training fraction held out for validation.",
                        "featcache: no validation rows carved from training unless asked")
GRID_VAL_FRACTION = _declare(
    "grid_val_fraction", 0.2,
    "Fraction of each class's training rows held out to select on (unused when the cache has an official "
    "val split).",
    "featcache: a grid selects on validation rows; 20 % as CLIP's linear-probe protocol carves",
    name="val_fraction")
POSTHOC_TAU = _declare("posthoc_tau", 0.0, "Post-hoc logit adjustment τ (0 = off).",
                       "featcache: post-hoc logit adjustment (Menon et al. 2021), off unless asked")
BOOTSTRAP = _declare(
    "bootstrap", 0,
    "Percentile 95% confidence intervals of acc, balanced acc, macro-F1, AUC (and, for two classes, "
    "sensitivity and specificity) from N resamplings of the test rows, in metrics.json (0 = off; 1000 is usual).",
    "featcache: percentile intervals (Efron & Tibshirani 1993), off unless asked", metavar="N")
BOOTSTRAP_SEED = _declare("bootstrap_seed", 0, "Seed of the --bootstrap resampling (same seed, same intervals).",
                          "featcache: the resampling's seed")
GRID_TOP = _declare("grid_top", 10, "Configurations to print.", "featcache: configurations a grid's summary shows",
                    name="top")

# -- LIFT fine-tuning (DESIGN.md §2): SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine,
#    epochs from the data set's recipe (featcache.pipelines.finetune LIFT_EPOCHS = 10, 20 for
#    iNat2018 by its descriptor), logit-adjusted loss, text init.
FINETUNE_SEEDS: tuple[int, ...] = _declare("finetune_seeds", (0,), "Comma-separated seeds; one run each.",
                                           "featcache: one run (fine-tuning is costly)", name="seeds")
FINETUNE_EPOCHS = _declare(
    "finetune_epochs", None, "Training epochs [default: the data set's LIFT recipe: 20 for inat2018, else 10].",
    f"{_LIFT}: configs/model/clip_vit_b16.yaml num_epochs 10 (featcache.pipelines.finetune LIFT_EPOCHS)",
    name="epochs", type=int)
FINETUNE_LR = _declare("finetune_lr", 0.01, "SGD learning rate (LIFT: 0.01).", f"{_LIFT}: SGD lr 0.01", name="lr")
FINETUNE_METHOD = _declare(
    "finetune_method", "adaptformer",
    "What is trained besides the classifier: a PEFT module (adaptformer, adapter, lora, vpt-*), bias terms "
    "(bitfit), everything (full) or nothing (classifier).",
    f"{_LIFT}: AdaptFormer in every block", name="method", names="fine-tuning method")
FINETUNE_MODEL = _declare(
    "finetune_model", "tiny-clip",
    "open_clip model name (LIFT: ViT-B-16 --pretrained openai; with a local OpenAI checkpoint FILE: "
    "ViT-B-16-quickgelu --pretrained FILE).",
    "featcache: the built-in random-weight model, offline (LIFT: ViT-B-16 openai)", name="model")
FINETUNE_LOSS = _declare("finetune_loss", "la",
                         "Training loss (LIFT: la, logit-adjusted; bce is multi-label and refused here).",
                         f"{_LIFT}: logit-adjusted loss", name="loss", names="loss")
FINETUNE_INIT = _declare("finetune_init", "text", "Head init: semantic-aware (text) or random.",
                         f"{_LIFT}: semantic-aware initialisation from 'a photo of a {{}}.' through proj^T",
                         name="init", choices=("text", "random"))
TRAIN_CANVAS = _declare(
    "train_canvas", None,
    "Speed option, not LIFT: shrink image files so the longer side fits N pixels, then crop on the device "
    "[default: off; LIFT's RandomResizedCrop of the full image in the workers].",
    "featcache speed option, off (LIFT's RandomResizedCrop of the full image)", type=int)
WORKERS = _declare("workers", None,
                   "Decoding processes for image files per rank [default: this node's CPUs / its ranks, at most 16].",
                   "featcache: featcache.images.default_workers", type=int)

# -- Extraction (`featcache extract`) and prediction (`featcache predict`)
MODEL = _declare(
    "model", "tiny-clip",
    "open_clip model name (or timm:NAME). The default is the built-in random-weight model for offline demos "
    "and tests; for real work pass e.g. --model ViT-B-16 --pretrained openai (for a local OpenAI checkpoint "
    "FILE: --model ViT-B-16-quickgelu --pretrained FILE).",
    "featcache: the built-in random-weight model, offline")
PRETRAINED = _declare(
    "pretrained", None,
    "Pretrained tag, checkpoint FILE, hf-hub:ID or 'random' [default: model's default]. Tags trained with "
    "QuickGELU (e.g. openai, dfn2b, metaclip_fullcc) are built with it. A local OpenAI checkpoint needs the "
    "-quickgelu model name: --model ViT-B-16-quickgelu --pretrained FILE (OpenAI's original ViT-B-16.pt is "
    "recognised by its SHA-256 and needs nothing extra).",
    "open_clip: the model's default tag", type=str)
RESIZE = _declare("resize", "scale", "Bring images to the model's size by scaling or by zero-padding.",
                  "open_clip's preprocessing scales", choices=("scale", "pad"))
DECODER = _declare(
    "decoder", "pil",
    "Image files: pil = decode and resize with PIL in the workers (exactly open_clip's preprocessing); "
    "device = workers only read the bytes, torchvision decodes JPEGs on the --device (nvJPEG on a GPU) and "
    "resizes and crops there (pixels within a level or two of PIL's).",
    "open_clip's preprocessing (PIL)", choices=("pil", "device"))
EXTRACT_TTE = _declare("extract_tte", False, "Also store the five test-time-ensembling crops.",
                       "LIFT's test-time ensembling: five crops of the (S + 24)-resized image", name="tte")
EXTRACT_BATCH_SIZE = _declare("extract_batch_size", 256, "Images per forward pass (per rank).",
                              "featcache: fits a ViT-L/14 in bf16 on a 16 GB GPU", name="batch_size")
CHUNK_SIZE = _declare("chunk_size", 4096, "Images per resumable shard.",
                      "featcache: a shard is a few seconds of work on a GPU (DESIGN.md §4 resumable)")
PREDICT_SPLIT = _declare(
    "predict_split", "auto",
    "Cache rows: auto = heldout on the run's own cache (its test rows per seed, scored as the run scored "
    "them), else all; train|val|test = the cache's source split.",
    "featcache: a run's own cache is scored as the run scored it", name="split",
    choices=("auto", "heldout", "all", "train", "val", "test"))
PREDICT_BATCH_SIZE = _declare("predict_batch_size", 64, "Images per batch (--images).",
                              "featcache: small batches for a handful of files", name="batch_size")
PREDICT_WORKERS = _declare("predict_workers", 0, "Decoding processes (--images).",
                           "featcache: decode in the main process", name="workers")

# -- FMMIC's MedMNIST benchmark (DESIGN.md §3; `bench medmnist`): AdamW, the head's lr decayed
#    ×0.9 every 200 iterations, 3 seeds (the learning rates and iterations are the recipe's,
#    featcache.pipelines.bench_medmnist.RECIPES, where these are None)
MEDMNIST_BACKBONES: tuple[str, ...] = _declare(
    "medmnist_backbones", ("tiny-clip",),
    "Comma list: MODEL[:WEIGHTS] (open_clip, e.g. ViT-B-16:openai) or timm:NAME[.TAG][:WEIGHTS] (e.g. "
    "timm:resnet18:random); WEIGHTS a tag, a FILE or 'random' (a local OpenAI checkpoint FILE needs the "
    "-quickgelu model: ViT-B-16-quickgelu:FILE).",
    "featcache: the built-in random-weight model, offline", name="backbones")
MEDMNIST_SIZES: tuple[int, ...] = _declare("medmnist_sizes", (28,),
                                           "Comma list of MedMNIST image sizes (28,64,128,224).",
                                           "MedMNIST's original 28 px", name="sizes")
MEDMNIST_RESIZE: tuple[str, ...] = _declare(
    "medmnist_resize", ("scale",),
    "Comma list of scale,pad,pad-norm: scale to the input size; zero-pad with black pixels before "
    "normalisation (featcache); or pad with the mean colour, zero after normalisation (MedMNIST+).",
    f"{_FMMIC}: images scaled to the input size", name="resize")
MEDMNIST_INPUT_SIZE = _declare(
    "medmnist_input_size", "paper",
    "Encoder input size: paper (224 px, 518 for DINOv2, as FMMIC), model (the model's own config) or pixels.",
    f"{_FMMIC} l. 121-122", name="input_size")
MEDMNIST_INTERPOLATION = _declare("medmnist_interpolation", "bilinear",
                                  "Scaling kernel (FMMIC: bilinear; model: the model's own).",
                                  f"{_FMMIC}: torchvision's bilinear resize", name="interpolation",
                                  choices=("bilinear", "bicubic", "model"))
MEDMNIST_SEEDS: tuple[int, ...] = _declare("medmnist_seeds", (0, 1, 2), "Comma list of seeds.",
                                           f"{_FMMIC}: 3 seeds", name="seeds")
MEDMNIST_PER_CLASS: tuple[int, ...] = _declare(
    "medmnist_per_class", (), "Comma list N1,N2,...: data-efficiency study with N training images per class.",
    "featcache: off (every training image)", name="per_class", item=int)
MEDMNIST_PER_CLASS_DRAW = _declare(
    "medmnist_per_class_draw", "random",
    "random: a fresh seeded draw per seed; first: the first N rows of each class (FMMIC).",
    "featcache: a seeded draw (FMMIC takes the first rows)", name="per_class_draw", choices=("random", "first"))
MEDMNIST_METHODS: tuple[str, ...] = _declare(
    "medmnist_methods", ("linear",),
    "Comma list of linear,finetune (finetune trains every encoder parameter, end to end).",
    f"{_FMMIC}: linear probes", name="methods")
MEDMNIST_RECIPE = _declare(
    "medmnist_recipe", "paper",
    "paper: FMMIC's code (15,000 iterations, batch 64, head lr 1e-3 x0.9 every 200, best val ACC checkpoint); "
    "fast: 1,000 iterations, batch 128, head lr grid 1e-4,1e-3,1e-2 (not the paper's). Flags below override "
    "single values.",
    f"{_FMMIC}: its code's recipe", name="recipe", choices=("paper", "fast"))
MEDMNIST_ITERATIONS = _declare("medmnist_iterations", None, "Training iterations [default: the recipe's].",
                               f"{_FMMIC}: RECIPES", name="iterations", type=int)
MEDMNIST_LRS = _declare("medmnist_lrs", None,
                        "Head learning-rate grid, selected on the official val split [default: the recipe's].",
                        f"{_FMMIC}: RECIPES", name="lrs", type=tuple, item=float)
MEDMNIST_BATCH_SIZE = _declare("medmnist_batch_size", None, "Training images per step [default: the recipe's].",
                               f"{_FMMIC}: RECIPES", name="batch_size", type=int)
MEDMNIST_VAL_CHECKS = _declare(
    "medmnist_val_checks", None,
    "Validation ACC checks per run (FMMIC's rule); the best checkpoint is tested; 0 = the final weights "
    "[default: the recipe's, 10].", f"{_FMMIC}: RECIPES", name="val_checks", type=int)
MEDMNIST_WEIGHT_DECAY = _declare("medmnist_weight_decay", 0.01, "AdamW weight decay.",
                                 f"{_FMMIC}: torch.optim.AdamW's default", name="weight_decay")
MEDMNIST_FEATURE = _declare(
    "medmnist_feature", "cls",
    "Cached feature to probe: cls = the pre-projection feature (768-d for ViT-B/16, where the paper's timm "
    "CLIP puts its head), embed = the projected embedding.",
    f"{_FMMIC}: timm's CLIP head sits on the pre-projection feature", name="feature", choices=("embed", "cls"))
MEDMNIST_BINARY_HEAD = _declare(
    "medmnist_binary_head", "softmax",
    "Binary sets: two logits with softmax cross-entropy, or one logit with BCE (FMMIC).",
    "featcache: two logits, as the multi-class sets", name="binary_head", choices=("softmax", "bce"))
MEDMNIST_SELECT_METRIC = _declare("medmnist_select_metric", "acc",
                                  "Validation figure that selects the learning rates.",
                                  f"{_FMMIC}: best val ACC", name="select_metric", choices=("acc", "auc"))
MEDMNIST_ENCODER_LRS: tuple[float, ...] = _declare(
    "medmnist_encoder_lrs", (),
    "Constant encoder lr(s) for --methods finetune: auto = 1e-6 for CNNs, 1e-7 for ViTs (FMMIC); a comma "
    "list runs the lr study as a grid selected on val.",
    f"{_FMMIC}: ENCODER_LR by family", name="encoder_lrs", item=float, cli_text="auto")
MEDMNIST_FINETUNE_HEAD_LR = _declare("medmnist_finetune_head_lr", 1e-3,
                                     "Head learning rate while fine-tuning (the encoder's: --encoder-lrs).",
                                     f"{_FMMIC}: head lr 1e-3", name="finetune_head_lr")
MEDMNIST_FINETUNE_ITERATIONS = _declare("medmnist_finetune_iterations", None,
                                        "Fine-tuning iterations [default: --iterations].",
                                        "featcache: as the probes", name="finetune_iterations", type=int)
MEDMNIST_FINETUNE_BATCH_SIZE = _declare(
    "medmnist_finetune_batch_size", None,
    "Fine-tuning images per step [default: --batch-size; 32 for DINOv2 under --recipe paper].",
    f"{_FMMIC}: 32 for DINOv2", name="finetune_batch_size", type=int)
MEDMNIST_OUT = _declare("medmnist_out", "runs/bench-medmnist", "Run directory.", "featcache", name="out",
                        type="path")


def markdown_table() -> str:
    """Every declared knob as the markdown table of ``docs/KNOBS.md``'s "Every declared knob"
    (``python -m featcache.knobs`` prints it; ``tests/test_knobs_doc.py`` checks the file has it)."""

    def shown(k: Knob) -> str:
        if k.default is None:
            return "derived (see help)"
        if k.type is bool:
            return "off"
        text = k.cli_default
        return f"`{text}`" if text != "" else "(empty)"

    rows = ["| record | option | default | choices | source |", "|---|---|---|---|---|"]
    for k in KNOBS.values():
        choices = ", ".join(k.choices) if k.choices else f"{k.names} names" if k.names else ""
        rows.append(f"| `{k.key}` | `--{k.name.replace('_', '-')}` | {shown(k)} | {choices} | "
                    f"{k.source.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
