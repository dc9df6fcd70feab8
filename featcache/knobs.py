"""The default of every shared training knob, declared once, with its source.

The pipelines' configs (``TrainHeadConfig``, ``TfaLtConfig``, ``ReproduceConfig``,
``CompareConfig``, ``FinetuneConfig``, ``GridConfig``, the MedMNIST benchmark's
``BenchConfig``), the heads' :class:`MemberSpec` and the CLI's options all read their
defaults from here, so a default is written in one place
and cannot drift between a config and its command-line option
(``tests/test_knob_defaults.py`` checks both: each option's default equals its config
field's, and each numeric default below is written nowhere else).

Why a module of constants and not the configs themselves: the configs live in modules that
import torch, and ``featcache --help`` must not (``tests/test_fast_cli.py``). This module
imports nothing, so the CLI reads the same values at no cost. Library modules only: it
never imports the heads, the pipelines or the CLI.

Derived defaults are resolved in one place each: τ = 1/logit_scale of the cache
(:attr:`featcache.cache.FeatureCache.default_tau`, read through
:meth:`featcache.heads.cached.CachedData.tau_for`), the split protocol by the cache's
descriptor (:func:`featcache.splits.resolve_protocol`), a fine-tuning run's epochs by the
data set's LIFT recipe (``featcache.pipelines.finetune``, ``LIFT_EPOCHS``), a grid's
``val_fraction`` by :data:`GRID_VAL_FRACTION` (``featcache.pipelines.grid``).
"""

from __future__ import annotations

# -- What is trained
HEAD = "linear"  # train-head and grid without --head
# compare without --heads: the few-shot heads, the trained probes and TFA-LT
COMPARE_HEADS: tuple[str, ...] = ("zeroshot", "knn", "logreg", "tip-adapter", "clip-adapter", "lp++",
                                  "clap", "linear", "cosine", "tfa-lt")

# -- Losses, samplers and head initialisation (names in the registries of featcache.heads)
LOSS = "ce"  # a head's loss; TFA-LT's stage I
SAMPLER = "instance"  # every training row once per epoch
INIT = "random"  # cosine head initialisation
ENSEMBLE = "logit"  # TFA-LT's ensembler (TfaLtConfig; the CLI runs TFA-LT only with --ensemble)
ENSEMBLE_LOSS = "focal"  # TFA-LT stage II (DESIGN.md §1: focal loss)
RUS = "fixed"  # TFA-LT stage I RUS: the paper's one generated set (or "fresh" each epoch)

# -- What a run reads from the cache, and where it runs
TEXT_SOURCE = "auto"  # prompts when the cache has text features, else class means
TEMPLATE = "auto"
VIEW = "standard"
FEATURE = "embed"  # the projected (CLIP) embedding
DEVICE = "auto"  # CUDA when present
PRECISION = "fp32"  # heads on cached features
CALIBRATE = "none"
PLOT_FORMAT = "png"
SELECT = "balanced_acc"  # a grid's selection metric

# -- Optimisation: TFA-LT (DESIGN.md §1): SGD momentum 0.9, weight decay 5e-4, batch 128,
#    lr 0.1 with cosine annealing; 200 epochs stage I, 100 epochs stage II; 3 seeds.
SEEDS: tuple[int, ...] = (0, 1, 2)
EPOCHS = 200  # a head's epochs; TFA-LT's stage I
BATCH_SIZE = 128
LR = 0.1
WEIGHT_DECAY = 5e-4
MOMENTUM = 0.9
SCHEDULE = "cosine"  # cosine annealing to 0 (or "constant", or "step": per-iteration step decay)
# SGD with momentum (TFA-LT, DESIGN.md §1); "adamw" is torch.optim.AdamW (the MedMNIST probes: FMMIC)
OPTIMIZER = "sgd"
ENSEMBLE_EPOCHS = 100  # TFA-LT stage II
ENSEMBLE_LR = 0.1  # TFA-LT stage II (the paper's one lr for both stages)
BASELINE_EPOCHS = 300  # TFA-LT's Table 1 SGD comparison methods (CE, Focal)

# -- Losses and heads
GAMMA = 2.0  # focal loss γ (DESIGN.md §1: γ = 2)
LA_TAU = 1.0  # logit-adjusted loss τ (DESIGN.md §2: τ = 1)
CB_BETA = 0.9999  # class-balanced loss β (Cui et al. 2019)
SIGMA = 25.0  # cosine classifier scale σ (DESIGN.md §2: σ = 25, LIFT's ``scale``)
# cosine-logit temperature τ where a cache has no logit_scale (imported features) and as the
# placeholder that validates a config whose τ is still None: 1/logit_scale of OpenAI CLIP
# (DESIGN.md §1: 0.01). The real default is the cache's 1/logit_scale (FeatureCache.default_tau).
TAU_FALLBACK = 0.01

# -- Splits and evaluation
VAL_FRACTION = 0.0  # no validation rows carved from training unless asked
GRID_VAL_FRACTION = 0.2  # a grid selects on validation rows, so it carves 20 % by default
POSTHOC_TAU = 0.0  # post-hoc logit adjustment off
BOOTSTRAP = 0  # confidence-interval resamplings off
BOOTSTRAP_SEED = 0
GRID_TOP = 10  # configurations a grid's summary shows first

# -- LIFT fine-tuning (DESIGN.md §2): SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine,
#    epochs from the data set's recipe (featcache.pipelines.finetune LIFT_EPOCHS = 10, 20 for
#    iNat2018 by its descriptor), logit-adjusted loss, text init.
FINETUNE_SEEDS: tuple[int, ...] = (0,)
FINETUNE_LR = 0.01
FINETUNE_METHOD = "adaptformer"
FINETUNE_MODEL = "tiny-clip"  # the built-in random-weight model (LIFT: ViT-B-16 openai)
FINETUNE_LOSS = "la"
FINETUNE_INIT = "text"
FINETUNE_PRECISION = "auto"  # bf16 on a GPU, fp32 on the CPU (featcache.device)

# -- FMMIC's MedMNIST benchmark (DESIGN.md §3; `bench medmnist`): AdamW, the head's lr decayed
#    ×0.9 every 200 iterations, 3 seeds (the learning rates and iterations are the recipe's)
MEDMNIST_SEEDS: tuple[int, ...] = (0, 1, 2)
MEDMNIST_WEIGHT_DECAY = 0.01  # = torch.optim.AdamW's default
MEDMNIST_LR_DECAY = 0.9
MEDMNIST_DECAY_EVERY = 200  # iterations
MEDMNIST_FINETUNE_HEAD_LR = 1e-3


def seeds_text(seeds: tuple[int, ...]) -> str:
    """``(0, 1, 2)`` -> ``"0,1,2"``: a seeds default as the CLI's ``--seeds`` text."""
    return ",".join(str(s) for s in seeds)
