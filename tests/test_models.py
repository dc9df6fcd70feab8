"""Model building (featcache.models.load_backbone): what open_clip only warns about is applied
or refused. No downloads: open_clip's pretrained configs are known offline, and where a real
tag must load, a random-weight checkpoint is laid into a temporary Hugging Face cache
(offline mode) at the repo the tag's config names.

The audit (README, "Backbones"): every warning open_clip 3.x can give while building a model
is in ``AUDITED`` below with what featcache does about it; ``test_every_open_clip_warning_is_audited``
fails when a new open_clip release adds one, so the table is re-checked then.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import torch
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from open_clip.pretrained import _PRETRAINED, _pcfg
from open_clip.transformer import QuickGELU
from torch import nn

from featcache import models
from featcache.cache import fingerprint_of, open_cache
from featcache.errors import FeatcacheError
from featcache.models import load_backbone
from featcache.pipelines.extract import ExtractConfig
from featcache.pipelines.extract import run as extract_run

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny-clip"
QUICK_TAG, PLAIN_TAG = "qg_test", "plain_test"  # open_clip cleans '-' in tags to '_'
HUB_REPO = "featcache-test/tiny-clip-qg"


# --------------------------------------------------------------------------------------
# Helpers: activations of the built modules, a temporary offline Hugging Face cache


def activations(model: nn.Module) -> set[type]:
    """The activation classes of every transformer MLP of both towers."""
    blocks = list(model.visual.transformer.resblocks) + list(model.transformer.resblocks)
    return {type(b.mlp.gelu) for b in blocks}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in offline mode (what a machine without network has)."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def lay(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """Put ``files`` into ``cache`` the way ``hf_hub_download`` leaves a downloaded repo."""
    base = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def tiny_weights() -> dict[str, torch.Tensor]:
    """A tiny-clip state dict that differs from the seeded random one (so loading shows)."""
    model = load_backbone(TINY).model
    gen = torch.Generator().manual_seed(1)
    return {k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def as_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def register_tags(monkeypatch: pytest.MonkeyPatch, tags: dict[str, dict]) -> None:
    """Give tiny-clip pretrained tags (open_clip's own registry, restored after the test)."""
    monkeypatch.setitem(_PRETRAINED, TINY, tags)


# --------------------------------------------------------------------------------------
# Bullet 1: QuickGELU where the tag says so


def test_quick_gelu_tag_loads_through_the_hf_cache_with_quick_gelu(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real tag path (open_clip's download from the hub cache, strict weight loading)."""
    register_tags(monkeypatch, {
        QUICK_TAG: _pcfg(hf_hub=f"{HUB_REPO}/", quick_gelu=True),
        PLAIN_TAG: _pcfg(hf_hub=f"{HUB_REPO}/"),
    })
    state = tiny_weights()
    lay(hub, HUB_REPO, {"open_clip_pytorch_model.bin": as_bytes(state)})

    quick = load_backbone(TINY, QUICK_TAG)
    assert activations(quick.model) == {QuickGELU} and quick.quick_gelu
    torch.testing.assert_close(quick.model.visual.proj, state["visual.proj"])  # the file's weights
    plain = load_backbone(TINY, PLAIN_TAG)
    assert activations(plain.model) == {nn.GELU} and not plain.quick_gelu
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(quick.model.encode_image(x), plain.model.encode_image(x))


# The tags of the papers' backbone and the common families: what open_clip's pretrained config
# says, hence what featcache must build (checked against open_clip's config in the test).
# Building a ViT-B takes about a second: one QuickGELU and one GELU tag stay in the fast
# subset, the rest run with the whole suite (every tag's config is read, fast, below).
_SLOW = pytest.mark.slow
QUICK_GELU_TABLE = [
    ("ViT-B-16", "openai", True),
    pytest.param("ViT-B-16", "dfn2b", True, marks=_SLOW),
    pytest.param("ViT-B-16", "metaclip_fullcc", True, marks=_SLOW),
    ("ViT-B-16", "laion2b_s34b_b88k", False),
    pytest.param("ViT-B-16", "datacomp_xl_s13b_b90k", False, marks=_SLOW),
    pytest.param("ViT-B-32", "laion400m_e32", True, marks=_SLOW),
]


@pytest.mark.parametrize(("model_name", "tag", "quick"), QUICK_GELU_TABLE)
def test_real_tags_build_the_activation_their_config_names(
    model_name: str, tag: str, quick: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real ViT-B configs and tags; only the download and the weight copy are stubbed."""
    assert bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu")) == quick
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: str(tmp_path / "w.bin"))
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda *a, **kw: None)
    backbone = load_backbone(model_name, tag)
    assert activations(backbone.model) == ({QuickGELU} if quick else {nn.GELU})
    assert backbone.quick_gelu is quick


def test_every_tag_gets_the_activation_its_config_says() -> None:
    """All of open_clip's tags: none is refused, and the decision equals what the tag says
    (or, where it says nothing, the architecture config)."""
    for model_name, tag in open_clip.list_pretrained():
        said = models.tag_quick_gelu(model_name, tag)
        built = models.config_quick_gelu(model_name) or models._tag_quick_gelu_force(model_name, tag)
        assert built == (said if said is not None else models.config_quick_gelu(model_name)), (model_name, tag)


def test_tag_that_says_nothing_keeps_its_config_and_open_clip_warning_is_not_raised(
    hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """roberta-ViT-B-32/laion2b_s12b_b32k's case (config QuickGELU, tag silent; open_clip
    warns "QuickGELU mismatch"), on a tiny QuickGELU config."""
    cfg = json.loads((REPO / "featcache/model_configs/tiny-clip.json").read_text())
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-clip-quickgelu", {**cfg, "quick_gelu": True})
    monkeypatch.setitem(_PRETRAINED, "tiny-clip-quickgelu", {PLAIN_TAG: _pcfg(hf_hub=f"{HUB_REPO}/")})
    lay(hub, HUB_REPO, {"open_clip_pytorch_model.bin": as_bytes(tiny_weights())})
    backbone = load_backbone("tiny-clip-quickgelu", PLAIN_TAG)
    assert activations(backbone.model) == {QuickGELU}


def test_a_quick_gelu_mismatch_left_over_is_an_error(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net: should a case slip past force_quick_gelu (a future open_clip), open_clip's
    "QuickGELU mismatch" warning becomes featcache's error instead of a wrong model."""
    register_tags(monkeypatch, {QUICK_TAG: _pcfg(hf_hub=f"{HUB_REPO}/", quick_gelu=True)})
    lay(hub, HUB_REPO, {"open_clip_pytorch_model.bin": as_bytes(tiny_weights())})
    monkeypatch.setattr(models, "_tag_quick_gelu_force", lambda model_name, tag: False)
    with pytest.raises(FeatcacheError, match="QuickGELU mismatch.*does not build a model"):
        load_backbone(TINY, QUICK_TAG)


def test_extraction_records_quick_gelu_in_meta_and_fingerprints(hub: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    register_tags(monkeypatch, {QUICK_TAG: _pcfg(hf_hub=f"{HUB_REPO}/", quick_gelu=True)})
    lay(hub, HUB_REPO, {"open_clip_pytorch_model.bin": as_bytes(tiny_weights())})
    common = {"dataset": "synthetic-lt", "workers": 0, "progress": False}
    quick = open_cache(extract_run(ExtractConfig(out=str(tmp_path / "q.h5"), pretrained=QUICK_TAG, **common)).out)
    plain = open_cache(extract_run(ExtractConfig(out=str(tmp_path / "p.h5"), **common)).out)
    assert quick.meta["quick_gelu"] is True and plain.meta["quick_gelu"] is False

    def old_model_fingerprint(meta: dict) -> str:  # what describe() hashed before QuickGELU
        pre = {k: v for k, v in meta["preprocessing"].items() if k not in ("tte", "tte_expand", "views")}
        keys = ("model", "pretrained", "weights_id", "precision")
        return fingerprint_of({**{k: meta[k] for k in keys}, "preprocessing": pre})

    # GELU caches (tiny-clip, every cache made before) keep their model fingerprint; a QuickGELU
    # cache cannot be taken for an old GELU cache of the same model and tag
    assert plain.model_fingerprint == old_model_fingerprint(plain.meta)
    assert quick.model_fingerprint != old_model_fingerprint(quick.meta)


def test_benchmark_fine_tuning_builds_through_the_loader(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featcache.backbones import BackboneSpec
    from featcache.pipelines.bench_medmnist import _encoder_for_finetuning

    register_tags(monkeypatch, {QUICK_TAG: _pcfg(hf_hub=f"{HUB_REPO}/", quick_gelu=True)})
    lay(hub, HUB_REPO, {"open_clip_pytorch_model.bin": as_bytes(tiny_weights())})
    backbone = _encoder_for_finetuning(BackboneSpec.parse(f"{TINY}:{QUICK_TAG}"), 3, torch.device("cpu"))
    assert activations(backbone.model) == {QuickGELU}


def test_only_the_loader_builds_open_clip_models() -> None:
    """Extraction, fine-tuning, the MedMNIST benchmark and the benchmarks scripts all build
    through featcache.models.load_backbone (so the rules above hold everywhere)."""
    offenders = []
    for path in [*REPO.glob("featcache/**/*.py"), *REPO.glob("pipelines/*.py"), *REPO.glob("benchmarks/*.py")]:
        if path.name == "models.py" and path.parent.name == "featcache":
            continue
        text = path.read_text()
        if re.search(r"open_clip\.(create_model\w*|load_openai_model)\(|from open_clip(\.\w+)* import .*create_model", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# --------------------------------------------------------------------------------------
# Local checkpoint files


@pytest.mark.slow
def test_local_file_for_a_gelu_name_of_quick_gelu_weights_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """`--model ViT-B-16 --pretrained FILE`: GELU plus a warning naming the -quickgelu model;
    `--model ViT-B-16-quickgelu --pretrained FILE`: QuickGELU, no warning."""
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    ckpt.write_bytes(b"converted OpenAI weights")
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda *a, **kw: None)
    with caplog.at_level(logging.WARNING, logger="featcache.models"):
        plain = load_backbone("ViT-B-16", str(ckpt))
    assert activations(plain.model) == {nn.GELU}
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "--model ViT-B-16-quickgelu" in text and "openai" in text and "QuickGELU" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="featcache.models"):
        quick = load_backbone("ViT-B-16-quickgelu", str(ckpt))
    assert activations(quick.model) == {QuickGELU} and quick.quick_gelu
    assert not [r for r in caplog.records if "QuickGELU" in r.getMessage()]


class ScriptedWeights(nn.Module):
    """A CLIP's parameters under their own names, scriptable: a TorchScript archive of the same
    keys as OpenAI's published ``.pt`` files (which are TorchScript archives of their CLIP)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model.named_children():
            setattr(self, name, child)
        for name, param in model.named_parameters(recurse=False):
            setattr(self, name, param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def test_openai_checkpoint_file_is_recognised_by_its_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's own file (a TorchScript archive, SHA-256 in open_clip's URL for the tag) is built
    as its tag: QuickGELU and the tag's preprocessing, although the name has no -quickgelu."""
    source = load_backbone(TINY).model
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.25)
    ckpt = tmp_path / "tiny.pt"
    torch.jit.script(ScriptedWeights(source)).save(str(ckpt))  # like OpenAI's ViT-B-16.pt
    sha = models.file_sha256(ckpt)
    register_tags(monkeypatch, {"openai": _pcfg(
        url=f"https://openaipublic.azureedge.net/clip/models/{sha}/tiny.pt", hf_hub="featcache-test/none/",
        quick_gelu=True, mean=INCEPTION_MEAN, std=INCEPTION_STD, resize_mode="squash",
    )})
    backbone = load_backbone(TINY, str(ckpt))
    assert activations(backbone.model) == {QuickGELU} and backbone.weights_id == f"sha256:{sha}"
    assert tuple(backbone.preprocess["mean"]) == INCEPTION_MEAN and backbone.preprocess["resize_mode"] == "squash"
    torch.testing.assert_close(backbone.model.visual.proj, source.visual.proj)


def test_other_torchscript_files_are_not_unpickled(tmp_path: Path) -> None:
    """Only the hash-recognised file is read with weights_only=False."""
    ckpt = tmp_path / "other.pt"
    torch.jit.script(ScriptedWeights(load_backbone(TINY).model)).save(str(ckpt))
    with pytest.raises(FeatcacheError, match="Could not load weights"):
        load_backbone(TINY, str(ckpt))


def test_local_file_gets_the_preprocessing_every_tag_shares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """open_clip gives a file its OpenAI defaults; a model whose tags all agree (SigLIP, CLIPA,
    MobileCLIP, PE) gets theirs, and where the tags disagree (ViT-L-14, ViT-H-14) a warning."""
    ckpt = tmp_path / "tiny.bin"
    torch.save(tiny_weights(), ckpt)
    imagenet = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear", "resize_mode": "squash"}
    register_tags(monkeypatch, {"a": _pcfg(**imagenet), "b": _pcfg(**imagenet)})
    agreed = load_backbone(TINY, str(ckpt))
    assert tuple(agreed.preprocess["mean"]) == IMAGENET_MEAN and agreed.preprocess["interpolation"] == "bilinear"

    register_tags(monkeypatch, {"a": _pcfg(**imagenet), "b": _pcfg()})
    with caplog.at_level(logging.WARNING, logger="featcache.models"):
        split = load_backbone(TINY, str(ckpt))
    assert tuple(split.preprocess["mean"]) == open_clip.OPENAI_DATASET_MEAN
    assert any("its tags a use other settings" in r.getMessage() for r in caplog.records)


def test_real_disagreeing_models_are_the_ones_the_readme_names() -> None:
    """The models whose tags disagree on preprocessing, so a local file gets a warning."""
    split = []
    for name in sorted({m for m, _ in open_clip.list_pretrained()}):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if len({tuple(models._tag_preprocess(name, t).items()) for t in tags}) > 1:
            split.append(name)
    assert split == ["ViT-H-14", "ViT-H-14-quickgelu", "ViT-L-14"]


# --------------------------------------------------------------------------------------
# hf-hub ids (BiomedCLIP's kind): config and weights from the hub repo


def _hub_config(quick_gelu: bool) -> bytes:
    cfg = json.loads((REPO / "featcache/model_configs/tiny-clip.json").read_text())
    return json.dumps({"model_cfg": {**cfg, "quick_gelu": quick_gelu},
                       "preprocess_cfg": {"mean": list(INCEPTION_MEAN), "std": list(INCEPTION_STD)}}).encode()


def test_hf_hub_repo_brings_its_activation_and_preprocessing(hub: Path) -> None:
    lay(hub, HUB_REPO, {"open_clip_config.json": _hub_config(True),
                        "open_clip_pytorch_model.bin": as_bytes(tiny_weights())})
    backbone = load_backbone(f"hf-hub:{HUB_REPO}")
    assert activations(backbone.model) == {QuickGELU} and backbone.quick_gelu
    assert tuple(backbone.preprocess["mean"]) == INCEPTION_MEAN
    assert backbone.name == backbone.weights_id == f"hf-hub:{HUB_REPO}"
    assert models.default_pretrained(f"hf-hub:{HUB_REPO}") == f"hf-hub:{HUB_REPO}"


def test_hf_hub_cache_gets_a_flat_default_file_name() -> None:
    from featcache.pipelines.extract import default_out

    out = default_out(ExtractConfig(dataset="synthetic-lt", model=f"hf-hub:{HUB_REPO}"))
    assert out == Path("caches") / "synthetic-lt-hf-hub-featcache-test-tiny-clip-qg.h5"


def test_hf_hub_repo_without_weights_is_an_error_not_a_random_model(hub: Path) -> None:
    """open_clip logs "Could not find/download default weights" and builds random weights."""
    lay(hub, HUB_REPO, {"open_clip_config.json": _hub_config(False)})
    with pytest.raises(FeatcacheError, match=f"Could not load weights 'hf-hub:{HUB_REPO}'"):
        load_backbone(f"hf-hub:{HUB_REPO}")


def test_hf_hub_model_with_other_pretrained_is_refused() -> None:
    """open_clip ignores `pretrained` for a hub model (with a warning); featcache refuses."""
    with pytest.raises(FeatcacheError, match="brings its own weights.*cannot apply"):
        load_backbone(f"hf-hub:{HUB_REPO}", "openai")


# --------------------------------------------------------------------------------------
# The audit table: every warning open_clip can give while building, and what featcache does

AUDITED = {
    # message start in open_clip/factory.py or pretrained.py -> featcache's handling
    "Multiple checkpoints found in": "unreachable: local-dir: models are not accepted",
    "Ignoring `pretrained=": "refused: hf-hub model with another --pretrained",
    "Local config loaded, but no CLIP weights": "unreachable: local-dir: models are not accepted",
    "Could not find/download default weights on HF Hub": "error: require_pretrained",
    "QuickGELU mismatch": "applied: force_quick_gelu; a silent tag keeps its config; any other is an error",
    "Model does not have a 'visual' attribute": "unreachable: pretrained_image_path unused",
    "Invalid file path specified for pretrained_image_path": "unreachable: pretrained_image_path unused",
    "Model does not have a standard 'text' attribute": "unreachable: pretrained_text_path unused",
    "Invalid file path specified for pretrained_text_path": "unreachable: pretrained_text_path unused",
    "Model {model_name} initialized partially": "error: require_pretrained; pretrained_text=False for random",
    "No pretrained weights loaded for model": "error: require_pretrained (random only when asked for)",
    "JIT scripting failed": "unreachable: jit unused",
    "Could not load config from hf-hub:": "unreachable: the model was built from that config just before",
    "Model configuration not found, returning default": "unreachable: names are checked against list_models",
    "exists, but the SHA256 checksum does not match": "applied by open_clip: re-downloads",
}


def test_every_open_clip_warning_is_audited() -> None:
    root = Path(open_clip.__file__).parent
    found = []
    for name in ("factory.py", "pretrained.py"):
        for m in re.finditer(r"(?:logging\.warning|warnings\.warn)\(\s*f?(['\"])(.+?)\1", (root / name).read_text(), re.S):
            found.append(m.group(2))
    unaudited = [msg for msg in found if not any(msg.startswith(key) or key in msg for key in AUDITED)]
    assert unaudited == [], "open_clip warns about something featcache has not audited"
    assert all(any(key in msg for msg in found) for key in AUDITED)  # the table has no stale rows


def test_help_says_what_a_local_openai_checkpoint_needs() -> None:
    from click.testing import CliRunner

    from featcache.cli import main

    for args in (["extract", "--help"], ["finetune", "--help"], ["bench", "medmnist", "--help"]):
        res = CliRunner().invoke(main, args, terminal_width=400)
        assert res.exit_code == 0, res.output
        assert "ViT-B-16-quickgelu" in res.output, args
