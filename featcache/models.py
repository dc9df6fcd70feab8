"""Loading open_clip backbones, and the two features featcache takes from them.

Everything goes through open_clip's own factory and tokenizer. ``tiny-clip`` is a
random-weight model from ``model_configs/tiny-clip.json`` (shipped in the package) for the
offline demo and the tests. Real models need weights: an open_clip pretrained tag
(``openai``), a local checkpoint file, or ``hf-hub:ORG/REPO``. Where weights cannot be had the
error says which model and tag, where it looked, and how to pass a local file; a real model
never silently falls back to random weights (``--pretrained random`` asks for them openly,
e.g. for speed benchmarks).

What open_clip only warns about (or leaves unsaid) is applied here or refused, never ignored
(the audit is the README's "Backbones" section and ``tests/test_models.py``):

- QuickGELU. A tag whose pretrained config says ``quick_gelu`` (``openai``, ``dfn2b``,
  ``dfn5b``, ``metaclip_400m``/``_fullcc``, ViT-B-32 ``laion400m_*``, RN50/RN101 ``yfcc15m``)
  builds the towers with QuickGELU (open_clip's ``force_quick_gelu``); open_clip itself builds
  nn.GELU and warns "QuickGELU mismatch". A local file carries no such record: the file of
  OpenAI's own download (its SHA-256 is part of open_clip's URL for the tag) is recognised and
  built like the tag; for any other file the model name decides (``ViT-B-16-quickgelu``), and a
  warning names the tags of that model trained with QuickGELU.
- Preprocessing (mean, std, interpolation, resize_mode) comes from the tag's pretrained config
  (open_clip applies it). For a local file open_clip silently uses its OpenAI defaults; here a
  recognised file gets its tag's settings, a file for a model whose every tag agrees on
  other settings (SigLIP, CLIPA, MobileCLIP, PE, ...) gets those, and where the tags disagree
  a warning names the ones that differ from what is used.
- Weights that fail to load (an ``hf-hub:`` repo without weights) are an error, not the
  random model open_clip would build after a logged warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from featcache.errors import FeatcacheError, did_you_mean

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_MODELS = ("tiny-clip",)
RANDOM = "random"
open_clip.add_model_config(CONFIG_DIR)


def list_models() -> list[dict[str, str]]:
    """Every model open_clip knows (plus featcache's tiny ones) with its pretrained tags, then
    every timm architecture as ``timm:NAME`` (see :mod:`featcache.timm_backbones`)."""
    from featcache import timm_backbones

    rows = []
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        rows.append({"model": name, "pretrained": ", ".join(tags) or "(none: file or random)"})
    return rows + timm_backbones.list_models()


def default_pretrained(model_name: str) -> str:
    """The weights used when ``--pretrained`` is omitted: random for tiny models, else openai/first tag."""
    from featcache import timm_backbones

    if timm_backbones.is_timm(model_name):
        return timm_backbones.default_pretrained(model_name)
    if model_name.startswith("hf-hub:"):
        return model_name  # the hub repo brings config and weights together
    if model_name in TINY_MODELS:
        return RANDOM
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if "openai" in tags:
        return "openai"
    if tags:
        return tags[0]
    raise FeatcacheError(
        f"Model '{model_name}' has no pretrained tag in open_clip; pass --pretrained FILE "
        "(a local checkpoint) or --pretrained random."
    )


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (identifies local checkpoint weights in cache metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Backbone:
    """A loaded open_clip (or timm) model with what featcache needs to know about it.

    timm backbones (:mod:`featcache.timm_backbones`) have no text tower: ``tokenizer`` is
    ``None`` (:attr:`has_text` False) and :attr:`logit_scale` is ``None``.
    ``preprocess`` is open_clip's own preprocessing config (size, mean, std, interpolation,
    resize_mode); ``weights_id`` is the pretrained tag, ``sha256:<hash>`` for a file, the hub
    id, or ``random``. ``quick_gelu`` says whether the towers were built with open_clip's
    QuickGELU (read from the built modules; always False for timm backbones).
    """

    model: nn.Module
    name: str
    pretrained: str
    weights_id: str
    tokenizer: object
    preprocess: dict = field(default_factory=dict)
    quick_gelu: bool = False

    @property
    def image_size(self) -> int:
        size = self.preprocess["size"]
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def logit_scale(self) -> float | None:
        scale = getattr(self.model, "logit_scale", None)
        return None if scale is None else float(scale.exp().item())

    @property
    def has_text(self) -> bool:
        """Whether the model has a text tower (open_clip) or only an image encoder (timm)."""
        return self.tokenizer is not None

    @property
    def embed_dim(self) -> int:
        return int(self.projection().shape[1])

    def projection(self) -> torch.Tensor:
        """The visual projection ``[W, E]`` (pre-projection width W to embedding E).

        Towers without a separate projection (ResNet attention pooling, timm heads) get the
        identity: their pre-projection feature is the embedding itself.
        """
        proj = getattr(self.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return proj.detach()
        dim = int(self.visual.output_dim)
        return torch.eye(dim, device=next(self.model.parameters()).device)

    def preprocess_settings(self) -> dict:
        """Plain-JSON preprocessing settings (stored in cache metadata)."""
        out = {}
        for key, value in self.preprocess.items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's root-logger "initialized randomly" warning (we log our own) and
    the Hugging Face hub's retry warnings (one per attempt and file, re-emitted through the
    root logger): a failed download becomes one error message (:func:`_weights_error`)."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------------------
# Weights that need a download: checked before any data is read


def hub_cache_dir(cache_dir: str | None = None) -> Path:
    """Where the Hugging Face hub keeps downloads: ``cache_dir``, ``$HF_HUB_CACHE``,
    ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub`` (read from the environment now)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_has(repo: str, filenames: list[str], cache_dir: Path) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=str(cache_dir)), str) for name in filenames)


def _offline_reason(host: str) -> str | None:
    """Why nothing can be downloaded from ``host`` (``HF_HUB_OFFLINE`` set, or no connection
    within 3 s), or ``None`` when it can be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    import socket

    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return f"{host} cannot be reached ({type(e).__name__}: {e})"
    return None


def check_weights(model_name: str, pretrained: str | None = None, cache_dir: str | None = None) -> None:
    """Fail fast, before any data is read, when the weights need a download that cannot happen.

    Weights that are local (``random``, a file, a tag or ``hf-hub:`` repo already in the hub
    cache, or open_clip's URL cache) pass; so does anything this check does not know how to
    locate (``load_backbone`` reports those). Otherwise, offline (``HF_HUB_OFFLINE=1``, or the
    download host unreachable within 3 s), one :class:`FeatcacheError` says where it looked and
    how to pass a local file."""
    from featcache import timm_backbones

    if timm_backbones.is_timm(model_name) or (model_name in TINY_MODELS and pretrained in (None, RANDOM)):
        return
    if model_name.startswith("hf-hub:"):
        pretrained = model_name
    if not model_name.startswith("hf-hub:") and model_name not in open_clip.list_models():
        return  # an unknown model: load_backbone names it
    pretrained = pretrained or default_pretrained(model_name)
    if pretrained == RANDOM or Path(pretrained).expanduser().exists():
        return
    hub = hub_cache_dir(cache_dir)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if pretrained.startswith("hf-hub:"):
        repo = pretrained.removeprefix("hf-hub:")
        if _hub_has(repo, ["open_clip_config.json"], hub):
            return
        where, host = f"the Hugging Face cache {hub} (repo {repo})", endpoint
    elif "/" in pretrained or Path(pretrained).suffix:
        return  # a missing file: load_backbone says so
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not cfg or "file" in cfg:
            return
        from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

        if cfg.get("hf_hub"):
            repo, filename = os.path.split(cfg["hf_hub"])
            names = [*_get_safe_alternatives(filename or HF_WEIGHTS_NAME), filename or HF_WEIGHTS_NAME]
            if _hub_has(repo, names, hub):
                return
            where, host = f"the Hugging Face cache {hub} (repo {repo})", endpoint
        elif cfg.get("url"):
            folder = Path(cache_dir).expanduser() if cache_dir else Path("~/.cache/clip").expanduser()
            if (folder / os.path.basename(cfg["url"])).exists():
                return
            where, host = f"open_clip's download folder {folder}", cfg["url"]
        else:
            return
    from urllib.parse import urlparse

    reason = _offline_reason(urlparse(host).hostname or host)
    if reason is None:
        return  # open_clip downloads them
    quick = (f" (an OpenAI checkpoint file needs --model {model_name}-quickgelu --pretrained FILE)"
             if pretrained == "openai" and not model_name.endswith("-quickgelu") else "")
    raise FeatcacheError(
        f"Weights '{pretrained}' for model '{model_name}' must be downloaded, but they are not in "
        f"{where} and {reason}; nothing was read from the data set. Either run once where there "
        "is network (the download lands in that cache; then HF_HUB_OFFLINE=1 keeps the hub from "
        "trying the network), or download the checkpoint elsewhere and pass the file: "
        f"--pretrained /path/to/open_clip_pytorch_model.bin (or .safetensors/.pt){quick}; "
        "--pretrained random gives random weights (speed tests only)."
    )


def _weights_error(model_name: str, pretrained: str, err: Exception) -> FeatcacheError:
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return FeatcacheError(
        f"Could not load weights '{pretrained}' for model '{model_name}': {type(err).__name__}: "
        f"{str(err).splitlines()[0] if str(err) else ''}\n"
        f"open_clip looked in the Hugging Face cache ({hub_cache}) and tried to download them. "
        "Without network access, download the checkpoint elsewhere and pass it as "
        f"--pretrained /path/to/checkpoint.bin (or .safetensors/.pt); or use "
        "--pretrained random for random weights (speed tests only)."
    )


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_URL_SHA256 = re.compile(r"/([0-9a-f]{64})/[^/]+$")


def tag_quick_gelu(model_name: str, tag: str) -> bool | None:
    """What open_clip's pretrained config of ``model_name``/``tag`` says about QuickGELU
    (``None`` when it does not say; every explicit entry in open_clip 3.x is ``True``)."""
    return open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu")


def config_quick_gelu(model_name: str) -> bool:
    """Whether ``model_name``'s architecture config builds QuickGELU (``-quickgelu`` names do)."""
    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def quick_gelu_tags(model_name: str) -> list[str]:
    """The tags of ``model_name`` whose weights were trained with QuickGELU."""
    return [t for t in open_clip.list_pretrained_tags_by_model(model_name) if tag_quick_gelu(model_name, t)]


def _quickgelu_name(model_name: str) -> str:
    variant = f"{model_name}-quickgelu"
    return variant if variant in open_clip.list_models() else f"a config of {model_name} with \"quick_gelu\": true"


def _tag_preprocess(model_name: str, tag: str) -> dict:
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    return {k: (tuple(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k]) for k in PREPROCESS_KEYS}


def tag_of_file(model_name: str, sha256: str) -> str | None:
    """The tag of ``model_name`` whose download is this very file, else ``None``.

    OpenAI's checkpoints are published at URLs that carry their SHA-256 (open_clip checks the
    download against it, ``open_clip/pretrained.py: download_pretrained_from_url``), so the
    original ``ViT-B-16.pt`` is recognised by its hash. Converted copies (the Hugging Face
    ``open_clip_pytorch_model.bin``) and other tags' files carry no such record.
    """
    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        match = _URL_SHA256.search(open_clip.get_pretrained_cfg(model_name, tag).get("url") or "")
        if match and match.group(1) == sha256:
            return tag
    return None


def _tag_quick_gelu_force(model_name: str, tag: str) -> bool:
    """``force_quick_gelu`` for loading ``tag``: True where the tag says QuickGELU and the config
    does not. A tag saying ``quick_gelu: False`` for a QuickGELU config is refused (none does
    in open_clip 3.x). A tag that says nothing keeps its config (``roberta-ViT-B-32``'s config
    has QuickGELU, its ``laion2b_s12b_b32k`` entry just predates the key; open_clip warns)."""
    said, built = tag_quick_gelu(model_name, tag), config_quick_gelu(model_name)
    if said is False and built:
        raise FeatcacheError(
            f"open_clip's tag '{tag}' of model '{model_name}' says quick_gelu=False but the "
            f"model config builds QuickGELU; use the model name without '-quickgelu'."
        )
    if said and not built:
        log.info("%s/%s was trained with QuickGELU: building the towers with QuickGELU "
                 "(open_clip's force_quick_gelu).", model_name, tag)
        return True
    return False


def _file_settings(model_name: str, path: Path, sha256: str) -> tuple[bool, dict | None, bool]:
    """(force_quick_gelu, force_preprocess_cfg, trusted) for a local checkpoint file.

    ``trusted``: the file is OpenAI's published checkpoint (hash match), so its TorchScript
    archive may be read with ``weights_only=False``.
    """
    tag = tag_of_file(model_name, sha256)
    if tag is not None:
        log.info("%s is open_clip's '%s' checkpoint of %s (its SHA-256 matches the download URL): "
                 "building it as that tag.", path, tag, model_name)
        return _tag_quick_gelu_force(model_name, tag), _tag_preprocess(model_name, tag), True
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    quick = quick_gelu_tags(model_name)
    if quick and not config_quick_gelu(model_name):
        every = "every open_clip tag of this model was" if len(quick) == len(tags) else \
            f"its tags {', '.join(quick)} were"
        log.warning(
            "Building %s from the file %s with nn.GELU, but %s trained with QuickGELU. If the file "
            "holds such weights (e.g. OpenAI's), pass --model %s --pretrained %s instead; features "
            "of the wrong activation are silently wrong.", model_name, path, every,
            _quickgelu_name(model_name), path,
        )
    if not tags:
        return False, None, False
    settings = {t: _tag_preprocess(model_name, t) for t in tags}
    distinct = set(map(lambda d: tuple(d.items()), settings.values()))
    if len(distinct) == 1:
        preprocess = next(iter(settings.values()))
        log.info("%s from a file: preprocessing %s, the setting every open_clip tag of this model "
                 "shares.", model_name, preprocess)
        return False, preprocess, False
    default = {k: getattr(PreprocessCfg(), k) for k in PREPROCESS_KEYS}  # what open_clip uses for a file
    differ = [t for t, d in settings.items() if d != default]
    log.warning(
        "Building %s from the file %s with open_clip's default preprocessing %s; its tags %s use "
        "other settings (%s). If the file holds one of those, its features are preprocessed "
        "wrongly.", model_name, path, default, ", ".join(differ),
        "; ".join(f"{t}: {settings[t]}" for t in differ),
    )
    return False, None, False


def load_backbone(
    model_name: str,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> Backbone:
    """Build an open_clip model with its weights, in eval mode, frozen, on ``device``.

    ``pretrained``: a tag open_clip knows for this model, a checkpoint file, ``hf-hub:ID``
    (also accepted as the model name), ``random``, or ``None`` for :func:`default_pretrained`.
    ``timm:NAME[.TAG]`` names load through :func:`featcache.timm_backbones.load_timm_backbone`.
    Every featcache pipeline builds its backbone here (extraction, fine-tuning, the MedMNIST
    benchmark); the module docstring lists what is applied beyond open_clip's defaults.
    """
    from featcache import timm_backbones

    if timm_backbones.is_timm(model_name):
        return timm_backbones.load_timm_backbone(model_name, pretrained, device=device)
    if model_name.startswith("hf-hub:"):
        if pretrained not in (None, model_name):
            raise FeatcacheError(
                f"Model '{model_name}' brings its own weights from the hub; --pretrained "
                f"'{pretrained}' cannot apply to it. Drop --pretrained (or pass --model NAME "
                f"--pretrained {pretrained} for an open_clip architecture)."
            )
        pretrained = model_name
    known = open_clip.list_models()
    if not model_name.startswith("hf-hub:") and model_name not in known:
        raise FeatcacheError(
            f"Unknown model '{model_name}'.{did_you_mean(model_name, known)} "
            "Run `featcache models` for the list."
        )
    if pretrained is None:
        pretrained = default_pretrained(model_name)

    create_name, create_pretrained, weights_id = model_name, None, RANDOM
    force_quick_gelu, force_preprocess, trusted, tag = False, None, False, None
    if pretrained == RANDOM:
        if model_name not in TINY_MODELS:
            log.warning("Model %s uses RANDOM weights (asked for with --pretrained random).", model_name)
    elif pretrained.startswith("hf-hub:"):
        if model_name not in (pretrained, TINY_MODELS[0]):
            log.warning("--model %s is not used: %s brings its own architecture config.", model_name, pretrained)
        create_name, weights_id = pretrained, pretrained
    elif Path(pretrained).expanduser().exists():
        path = Path(pretrained).expanduser().resolve()
        create_pretrained, weights_id = str(path), f"sha256:{file_sha256(path)}"
        force_quick_gelu, force_preprocess, trusted = _file_settings(model_name, path, weights_id[7:])
    elif any(sep in pretrained for sep in ("/", "\\")) or Path(pretrained).suffix:
        raise FeatcacheError(
            f"Weights file {pretrained} for model '{model_name}' does not exist. Pass an existing "
            "checkpoint file, an open_clip pretrained tag, or hf-hub:ORG/REPO."
        )
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise FeatcacheError(
                f"Model '{model_name}' has no pretrained tag '{pretrained}'."
                f"{did_you_mean(pretrained, tags)} Known tags: {', '.join(tags) or 'none'}; "
                "or pass a checkpoint file, or 'random'."
            )
        create_pretrained, weights_id, tag = pretrained, pretrained, pretrained
        force_quick_gelu = _tag_quick_gelu_force(model_name, tag)

    try:
        # Random weights are seeded, so "random" names one fixed model: a resumed or repeated
        # extraction with random weights gives the same features.
        with torch.random.fork_rng(devices=[]), _quiet_open_clip(), warnings.catch_warnings():
            # After force_quick_gelu, open_clip's "QuickGELU mismatch" warning is left only for
            # a tag that does not say (roberta-ViT-B-32, see _tag_quick_gelu_force); any other
            # is an error, never a warning nobody reads.
            benign = tag is not None and tag_quick_gelu(model_name, tag) is None
            warnings.filterwarnings("ignore" if benign else "error", message="QuickGELU mismatch")
            torch.manual_seed(0)
            model = open_clip.create_model(
                create_name, pretrained=create_pretrained, device=device, cache_dir=cache_dir,
                force_quick_gelu=force_quick_gelu, force_preprocess_cfg=force_preprocess,
                # real weights or an error: open_clip would otherwise log a warning (silenced
                # above) and hand back random weights, e.g. for an hf-hub repo without weights
                require_pretrained=pretrained != RANDOM,
                # "random" means random: no Hugging Face text weights fetched for random towers
                pretrained_text=False,
                # a TorchScript archive (OpenAI's .pt) cannot be read weights-only; allowed only
                # for the file whose hash open_clip's own download URL names
                weights_only=not trusted,
            )
    except FeatcacheError:
        raise
    except UserWarning as e:  # turned into an error above
        if "QuickGELU mismatch" not in str(e):
            raise
        raise FeatcacheError(
            f"Model '{model_name}' with weights '{pretrained}': {e} featcache does not build a model "
            "whose activation differs from the one its weights were trained with; use the model "
            "name whose config matches (with or without '-quickgelu')."
        ) from e
    except Exception as e:  # open_clip / HF hub raise many kinds; all mean "no weights"
        if pretrained == RANDOM:
            raise
        raise _weights_error(model_name, pretrained, e) from e
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(create_name)
    return Backbone(
        model=model,
        name=create_name if create_name.startswith("hf-hub:") else model_name,
        pretrained=pretrained,
        weights_id=weights_id,
        tokenizer=tokenizer,
        preprocess=dict(open_clip.get_model_preprocess_cfg(model)),
        quick_gelu=any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules()),
    )


def image_features(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected embedding ``[B, E]`` and pre-projection CLS feature ``[B, W]`` of ``images``.

    For open_clip ViTs the pre-projection feature is the pooled ``ln_post`` output (768-d for
    ViT-B/16) and the embedding is that times ``visual.proj``. Other towers have no separate
    projection, so both outputs are the tower's output.
    """
    if all(hasattr(visual, a) for a in ("_embeds", "_pool")) and isinstance(
        getattr(visual, "proj", None), torch.Tensor
    ):
        tokens = visual.transformer(visual._embeds(images))  # [B, T, W]
        pre, _ = visual._pool(tokens)  # [B, W]
        return pre @ visual.proj, pre
    out = visual(images)
    if isinstance(out, tuple):
        out = out[0]
    return out, out


@torch.no_grad()
def text_features(backbone: Backbone, prompts: list[str], device: torch.device, batch: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings ``[len(prompts), E]``, float32, on the CPU."""
    out = []
    for i in range(0, len(prompts), batch):
        tokens = backbone.tokenizer(prompts[i : i + batch]).to(device)
        feats = backbone.model.encode_text(tokens).float()
        out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
    return torch.cat(out)
