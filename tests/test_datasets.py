"""Data set adapters: each reads its real layout, and every bad input gets a clear error."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    HAM_DX,
    ISIC_CLASSES,
    image_bytes,
    write_aptos,
    write_cifar100,
    write_csv_list,
    write_empty_file,
    write_folder,
    write_ham10000,
    write_image,
    write_inat2018,
    write_isic_official,
    write_lt_lists,
    write_medmnist,
    write_truncated_jpeg,
)
from PIL import Image

from featcache.datasets import (
    DATASETS,
    Descriptor,
    build_manifest,
    describe_datasets,
    load_descriptor,
)
from featcache.datasets.base import data_dir
from featcache.datasets.cifar import cifar_lt_counts
from featcache.datasets.medmnist import SUBSETS
from featcache.errors import DataError, FeatcacheError
from featcache.preprocess import array_batch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _error(name: str, root: Path | None, **options: object) -> str:
    with pytest.raises(FeatcacheError) as info:
        build_manifest(name, root, **options)
    return str(info.value)


# --- registry, catalogue, descriptors -------------------------------------------------


def test_every_adapter_is_registered_and_described() -> None:
    names = {"isic2018", "aptos2019", "medmnist", "folder", "csv", "synthetic-lt", "cifar100-lt",
             "imagenet-lt", "places-lt", "inat2018"}
    assert names <= set(DATASETS.names())
    rows = {r["name"]: r for r in describe_datasets()}
    for name in names:
        assert rows[name]["layout"] and "\n" not in rows[name]["layout"]
    medmnist = {o["name"]: o for o in rows["medmnist"]["option_specs"]}
    assert medmnist["subset"]["required"] and not medmnist["size"]["required"]
    assert rows["medmnist"]["options"] == "subset (required), size=None"
    assert [o["name"] for o in rows["synthetic-lt"]["option_specs"]] == [
        "num_classes", "imbalance", "max_per_class", "size", "seed", "test_per_class"]


def test_unknown_option_and_missing_required_option() -> None:
    assert "Did you mean 'imbalance'" in _error("synthetic-lt", None, imbalanse=10)
    assert "needs the option(s) subset" in _error("medmnist", SHARED.parent if SHARED.exists() else Path("/"))
    assert "Did you mean 'isic2018'" in _error("isic2017", None)


def test_shipped_descriptors_load_and_are_consistent() -> None:
    files = sorted((data_dir() / "datasets").glob("*.json"))
    assert len(files) >= 15
    for path in files:
        d = load_descriptor(path.stem)
        assert isinstance(d, Descriptor) and d.name == path.stem
        assert len(d.class_names) == len(d.class_ids) and all(d.class_names)
    isic = load_descriptor("isic2018")
    assert isic.class_ids == ISIC_CLASSES and isic.data_type == "dermoscopy"
    assert isic.test_per_class == 60 and isic.protocol == "tfa-lt"
    assert set(isic.groups["few"]) == {"BCC", "AKIEC", "VASC", "DF"} and isic.groups["many"] == ("NV",)
    aptos = load_descriptor("aptos2019")
    assert aptos.class_names[0] == "no DR" and aptos.test_per_class == 150
    assert aptos.groups == {"many": ("0",), "medium": ("2",), "few": ("1", "3", "4")}
    for subset in SUBSETS:
        d = load_descriptor(f"medmnist-{subset}")
        assert d.protocol == "official" and d.multi_label == (subset == "chestmnist")
    assert load_descriptor("medmnist-chestmnist").num_classes == 14
    assert load_descriptor("medmnist-pathmnist").data_type == "colon pathology"
    assert load_descriptor("no-such-set") is None


# --- ISIC 2018 / HAM10000 --------------------------------------------------------------


def test_isic_official_layout(tmp_path: Path) -> None:
    m = build_manifest("isic2018", write_isic_official(tmp_path))
    assert m.options["layout"] == "official" and len(m) == 10
    assert m.ids[0] == "ISIC_0024306" and m.sources[0].endswith("ISIC2018_Task3_Training_Input/ISIC_0024306.jpg")
    assert np.bincount(m.labels).tolist() == [2, 3, 1, 1, 1, 1, 1]  # MEL, NV, BCC, ...
    assert set(m.splits) == {""}
    img = m.load(0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_ham10000_layout_finds_images_in_any_subfolder(tmp_path: Path) -> None:
    m = build_manifest("isic2018", write_ham10000(tmp_path, {"nv": 4, "df": 1, "mel": 1, "bcc": 1,
                                                            "akiec": 1, "bkl": 1, "vasc": 2}))
    assert m.options["layout"] == "ham10000" and len(m) == 11
    assert {Path(s).parent.name for s in m.sources} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    counts = dict(zip(m.descriptor.class_ids, np.bincount(m.labels, minlength=7).tolist(), strict=True))
    assert counts == {"MEL": 1, "NV": 4, "BCC": 1, "AKIEC": 1, "BKL": 1, "DF": 1, "VASC": 2}


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_isic_official_bad_rows(tmp_path: Path) -> None:
    root = write_isic_official(tmp_path)
    gt = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    good = gt.read_text()
    _rewrite(gt, "ISIC_0024306,1.0,0.0", "ISIC_0024306,1.0,1.0")
    msg = _error("isic2018", root)
    assert str(gt) in msg and "line 2" in msg and "several labels (MEL, NV)" in msg
    gt.write_text(good)
    _rewrite(gt, "ISIC_0024306,1.0,0.0", "ISIC_0024306,0.0,0.0")
    msg = _error("isic2018", root)
    assert "line 2" in msg and "no label" in msg
    gt.write_text(good)
    _rewrite(gt, "ISIC_0024306,1.0", "ISIC_0024306,yes")
    assert "'yes," in _error("isic2018", root)
    gt.write_text(good + "ISIC_0024306,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    msg = _error("isic2018", root)
    assert "duplicate image id 'ISIC_0024306'" in msg and "line 12" in msg and "first on line 2" in msg
    gt.write_text(good)
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_0024307.jpg").unlink()
    msg = _error("isic2018", root)
    assert "1 of 10 images" in msg and "line 3: ISIC_0024307.jpg" in msg


def test_ham10000_bad_rows(tmp_path: Path) -> None:
    root = write_ham10000(tmp_path)
    meta = root / "HAM10000_metadata.csv"
    good = meta.read_text()
    _rewrite(meta, ",nv,", ",melanoma,")
    msg = _error("isic2018", root)
    assert "Unknown class 'melanoma'" in msg and str(meta) in msg and "line 4" in msg
    meta.write_text(good)
    _rewrite(meta, ",nv,", ",,")
    assert "no label (empty dx)" in _error("isic2018", root)
    meta.write_text(good.replace("dx,", "diagnosis,", 1))
    assert "has no column(s) dx" in _error("isic2018", root)
    meta.write_text(good)
    write_image(root / "copies" / "ISIC_0024306.jpg")
    assert "matches several files" in _error("isic2018", root)
    shutil.rmtree(root / "copies")
    meta.unlink()
    assert "No ISIC2018 labels found" in _error("isic2018", root)
    assert "Unknown isic2018 layout 'oficial'" in _error("isic2018", root, layout="oficial")


def test_isic_empty_class_is_refused(tmp_path: Path) -> None:
    root = write_ham10000(tmp_path, {c: 1 for c in HAM_DX if c != "df"})
    assert "Class(es) DF of isic2018 have no images" in _error("isic2018", root)


def test_broken_images_are_caught_when_loading(tmp_path: Path) -> None:
    root = write_ham10000(tmp_path)
    m = build_manifest("isic2018", root)  # building the manifest opens no image
    write_truncated_jpeg(Path(m.sources[0]))
    write_empty_file(Path(m.sources[1]))
    Path(m.sources[2]).unlink()
    with pytest.raises(DataError, match=r"could not be read"):
        m.load(0)
    with pytest.raises(DataError, match=r"empty \(0 bytes\)"):
        m.load(1)
    with pytest.raises(DataError, match=r"does not exist"):
        m.load(2)
    assert m.load(3).mode == "RGB"


def test_missing_root() -> None:
    assert "needs --root" in _error("isic2018", None)
    assert "does not exist" in _error("aptos2019", Path("/no/such/folder"))


# --- APTOS 2019 -----------------------------------------------------------------------


def test_aptos(tmp_path: Path) -> None:
    m = build_manifest("aptos2019", write_aptos(tmp_path))
    assert np.bincount(m.labels).tolist() == [4, 2, 3, 1, 1]
    assert m.descriptor.data_type == "fundus" and m.load(0).getpixel((0, 0))[0] > 200
    assert m.sources[0].endswith(f"train_images/{m.ids[0]}.png")


def test_aptos_bad_rows(tmp_path: Path) -> None:
    root = write_aptos(tmp_path)
    csv = root / "train.csv"
    good = csv.read_text()
    csv.write_text(good.replace(",4\n", ",7\n"))
    msg = _error("aptos2019", root)
    assert "Unknown class '7'" in msg and "line 12" in msg
    csv.write_text(good.replace(",4\n", ",\n"))
    assert "line 12: image 00000000000a has no label" in _error("aptos2019", root)
    csv.write_text(good.replace(",4\n", ',"3;4"\n'))
    assert "several labels '3;4'" in _error("aptos2019", root)
    csv.write_text(good + "000000000000,0\n")
    assert "duplicate id_code '000000000000'" in _error("aptos2019", root)
    csv.write_text(good + "ffffffffffff,0\n")
    msg = _error("aptos2019", root)
    assert "line 13" in msg and "ffffffffffff.png" in msg
    csv.write_text(good)
    shutil.rmtree(root / "train_images")
    assert "image folder not found" in _error("aptos2019", root)


# --- MedMNIST --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subset", "kwargs"),
    [
        ("pneumoniamnist", {}),  # binary, grey, [N, 1]
        ("breastmnist", {"flat_labels": True}),  # binary, grey, [N]
        ("dermamnist", {"num_classes": 7, "rgb": True, "sizes": (14, 3, 7)}),  # multi-class RGB
        ("chestmnist", {"num_classes": 14, "multi_label": True}),  # multi-label
    ],
)
def test_medmnist_variants(tmp_path: Path, subset: str, kwargs: dict) -> None:
    path, arrays = write_medmnist(tmp_path, subset, **kwargs)
    m = build_manifest("medmnist", tmp_path, subset=subset)
    n = sum(len(arrays[f"{s}_images"]) for s in ("train", "val", "test"))
    assert m.descriptor.name == f"medmnist-{subset}" and len(m) == n
    channels = 1 if arrays["test_images"][0].ndim == 2 else 3  # grey sets stay one channel
    assert m.arrays.shape == (n, 28, 28, channels) and m.arrays.dtype == np.uint8
    assert m.ids[:2] == ["train-0", "train-1"] and m.sources[0] == f"{path.name}#train/0"
    assert m.splits.count("val") == len(arrays["val_images"])
    first_test = m.splits.index("test")
    assert m.sources[first_test] == f"{path.name}#test/0"
    raw = arrays["test_images"][0]
    expected = raw if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=2)
    assert np.array_equal(array_batch(m.arrays, [first_test])[0].permute(1, 2, 0).numpy(), expected)
    assert np.array_equal(np.asarray(m.load(first_test)), expected) and m.load(0).mode == "RGB"
    labels = np.concatenate([arrays[f"{s}_labels"] for s in ("train", "val", "test")])
    if kwargs.get("multi_label"):
        assert m.labels.shape == (n, 14) and m.descriptor.multi_label
        assert np.array_equal(m.labels, labels)
    else:
        assert m.labels.shape == (n,) and np.array_equal(m.labels, labels.reshape(-1))


def test_medmnist_sizes(tmp_path: Path) -> None:
    write_medmnist(tmp_path, "bloodmnist", num_classes=8, sizes=(8, 1, 1), size=64, rgb=True)
    m = build_manifest("medmnist", tmp_path, subset="bloodmnist")  # the only file present
    assert m.arrays.shape[1:] == (64, 64, 3) and m.options["size"] == 64
    write_medmnist(tmp_path, "bloodmnist", num_classes=8, sizes=(8, 1, 1), size=28, rgb=True)
    assert build_manifest("medmnist", tmp_path, subset="bloodmnist").arrays.shape[1] == 28  # plain first
    assert build_manifest("medmnist", tmp_path, subset="bloodmnist", size=64).arrays.shape[1] == 64
    assert "bloodmnist_128.npz" in _error("medmnist", tmp_path, subset="bloodmnist", size=128)
    assert "size 100 is not available" in _error("medmnist", tmp_path, subset="bloodmnist", size=100)
    (tmp_path / "bloodmnist.npz").unlink()
    write_medmnist(tmp_path, "bloodmnist", num_classes=8, sizes=(8, 1, 1), size=128, rgb=True)
    assert "Several MedMNIST files" in _error("medmnist", tmp_path, subset="bloodmnist")


def test_medmnist_errors(tmp_path: Path) -> None:
    assert "Did you mean 'pneumoniamnist'" in _error("medmnist", tmp_path, subset="pneumonimnist")
    assert "pneumoniamnist.npz" in _error("medmnist", tmp_path, subset="pneumoniamnist")
    path, arrays = write_medmnist(tmp_path, "pneumoniamnist")
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][3] = 5
    np.savez(path, **arrays)
    msg = _error("medmnist", tmp_path, subset="pneumoniamnist")
    assert "[train]: row 3 has label 5" in msg and str(path) in msg
    arrays["train_labels"] = np.zeros((6, 3), np.uint8)
    np.savez(path, **arrays)
    assert "expected [N] or [N, 1]" in _error("medmnist", tmp_path, subset="pneumoniamnist")
    del arrays["train_labels"]
    np.savez(path, **arrays)
    assert "no matching train_labels" in _error("medmnist", tmp_path, subset="pneumoniamnist")
    path.write_bytes(b"not a zip")
    assert "could not be read" in _error("medmnist", tmp_path, subset="pneumoniamnist")
    write_medmnist(tmp_path, "pneumoniamnist", sizes=(1, 1, 1))  # train lacks class 1
    assert "Class(es) 1 of medmnist-pneumoniamnist have no images" in _error(
        "medmnist", tmp_path, subset="pneumoniamnist")


# --- folder and csv ------------------------------------------------------------------


def test_folder_flat(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "skin")
    (root / "normal" / "notes.txt").write_text("not an image")
    write_image(root / "normal" / "deeper" / "x.jpg", 2)
    m = build_manifest("folder", root, data_type="ultrasound")
    assert m.descriptor.class_ids == ("benign_lesion", "malignant", "normal")
    assert m.descriptor.class_names[0] == "benign lesion" and m.descriptor.data_type == "ultrasound"
    assert np.bincount(m.labels).tolist() == [3, 2, 2] and set(m.splits) == {""}
    assert "normal/deeper/x.jpg" in m.ids


def test_folder_with_splits_and_empty_class(tmp_path: Path) -> None:
    root = write_folder(tmp_path, splits={"train": {"a": 3, "b": 2}, "valid": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    m = build_manifest("folder", root)
    assert sorted(set(m.splits)) == ["test", "train", "val"] and m.splits.count("train") == 5
    assert m.descriptor.protocol == "official"
    (root / "train" / "c").mkdir()
    assert "Class(es) c of folder have no images" in _error("folder", root)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No class folders" in _error("folder", empty)


def test_csv_list(tmp_path: Path) -> None:
    csv = write_csv_list(tmp_path)
    m = build_manifest("csv", tmp_path, csv="labels.csv", data_type="MRI")
    assert m.descriptor.class_ids == ("cyst", "normal", "tumour") and m.descriptor.data_type == "MRI"
    assert m.splits == ["train"] * 4 + ["test"] * 2 and m.ids[0] == "images/0.png"
    # paths relative to the CSV's folder, an absolute CSV path, ids and a fixed class list
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "images").symlink_to(tmp_path / "images")
    (sub / "x.csv").write_text("path,label,id\nimages/0.png,cyst,a\nimages/2.png,tumour,b\n")
    m = build_manifest("csv", None, csv=str(sub / "x.csv"), classes="tumour,cyst")
    assert m.ids == ["a", "b"] and m.labels.tolist() == [1, 0] and csv.exists()


def test_csv_bad_rows(tmp_path: Path) -> None:
    csv = write_csv_list(tmp_path)
    good = csv.read_text()
    for bad, expected in [
        ("images/1.png,,train", "line 3: image images/1.png has no label"),
        ('images/1.png,"cyst;tumour",train', "several labels 'cyst;tumour'"),
        ("images/1.png,cyst|normal,train", "several labels 'cyst|normal'"),
        ("images/1.png,cyst,training", "line 3: unknown split 'training'"),
        ("images/0.png,cyst,train", "line 3: duplicate image id 'images/0.png' (first on line 2)"),
        ("images/missing.png,cyst,train", "line 3: " + str(tmp_path / "images/missing.png")),
    ]:
        csv.write_text(good.replace("images/1.png,cyst,train", bad))
        msg = _error("csv", tmp_path, csv=str(csv))
        assert expected in msg and str(csv) in msg, msg
    csv.write_text(good)
    assert "unknown class 'tumour'. Did you mean 'tumor'" in _error("csv", tmp_path, csv=str(csv), classes="cyst,normal,tumor")
    assert "Class(es) polyp of csv have no images" in _error("csv", tmp_path, csv=str(csv), classes="cyst,normal,tumour,polyp")
    assert "CSV list not found" in _error("csv", tmp_path, csv="nope.csv")
    assert "names cyst more than once" in _error("csv", tmp_path, csv=str(csv), classes="cyst,normal,cyst")


# --- synthetic-lt ------------------------------------------------------------------


def test_synthetic_lt_is_deterministic_and_long_tailed() -> None:
    a = build_manifest("synthetic-lt", None)
    b = build_manifest("synthetic-lt", None)
    assert np.array_equal(a.arrays, b.arrays) and a.fingerprint() == b.fingerprint()
    assert not np.array_equal(a.arrays, build_manifest("synthetic-lt", None, seed=1).arrays)
    train = np.array(a.splits) == "train"
    counts = np.bincount(a.labels[train])
    assert counts.tolist() == [100, 54, 30, 16, 9, 5]  # 100 * 20^(-c/5), floored
    assert np.bincount(a.labels[~train]).tolist() == [10] * 6
    d = a.descriptor
    assert d.groups == {"many": ("0", "1"), "medium": ("2", "3"), "few": ("4", "5")}
    assert d.class_names[0] == "class 0 (red vertical stripes)" and d.data_type == "synthetic"
    assert a.arrays.shape == (len(a), 32, 32, 3) and a.load(0).size == (32, 32)


def test_manifests_pickle_for_worker_processes(tmp_path: Path) -> None:
    for m in (build_manifest("synthetic-lt", None), build_manifest("aptos2019", write_aptos(tmp_path))):
        copy = pickle.loads(pickle.dumps(m))
        assert np.array_equal(np.asarray(copy.load(3)), np.asarray(m.load(3)))


def test_synthetic_lt_classes_are_separable_by_colour() -> None:
    m = build_manifest("synthetic-lt", None, num_classes=8, max_per_class=40, imbalance=4, size=16)
    means = m.arrays.reshape(len(m), -1, 3).mean(1)  # [N, 3] mean colour per image
    train = np.array(m.splits) == "train"
    centroids = np.stack([means[train & (m.labels == c)].mean(0) for c in range(8)])
    pred = np.argmin(((means[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == m.labels[~train]).mean() > 0.9  # a nearest-centroid rule on colour works


def test_synthetic_lt_options_are_validated() -> None:
    assert "num_classes must be at least 2" in _error("synthetic-lt", None, num_classes=1)
    assert "imbalance" in _error("synthetic-lt", None, imbalance=0.5)


# --- LIFT data sets ------------------------------------------------------------------


def test_cifar100_lt_profile_and_ldam_subset(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path)
    counts = cifar_lt_counts(100)
    assert counts[0] == 500 and counts[99] == 5 and counts[50] == int(500 * 0.01 ** (50 / 99))
    m = build_manifest("cifar100-lt", root)
    train = np.array(m.splits) == "train"
    assert np.bincount(m.labels[train], minlength=100).tolist() == [min(30, n) for n in counts]
    assert train.sum() + 200 == len(m) and np.bincount(m.labels[~train]).tolist() == [2] * 100
    # the same images as LDAM-DRW's IMBALANCECIFAR100: np.random.seed(0), shuffle per class
    with open(root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    targets = np.array(raw["fine_labels"])
    np.random.seed(0)
    expected = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        expected += idx[:n].tolist()
    assert [int(i.split("-")[1]) for i in np.array(m.ids)[train]] == expected
    k = expected[0]
    assert np.array_equal(m.arrays[0], raw["data"][k].reshape(3, 32, 32).transpose(1, 2, 0))
    assert m.descriptor.class_names[0] == "fine 00" and m.descriptor.protocol == "lift"
    assert set(m.descriptor.groups["few"]) == {str(f"fine_{c:02d}") for c in range(100) if min(30, counts[c]) < 20}
    ten = build_manifest("cifar100-lt", root, imbalance=10)
    assert (np.array(ten.splits) == "train").sum() == 3000
    assert "imbalance must be one of 100, 50, 10" in _error("cifar100-lt", root, imbalance=20)
    (root / "cifar-100-python" / "meta").unlink()
    assert "CIFAR-100 pickle not found" in _error("cifar100-lt", root)


@pytest.mark.parametrize(("name", "prefix"), [("imagenet-lt", "ImageNet_LT"), ("places-lt", "Places_LT")])
def test_lt_list_files(tmp_path: Path, name: str, prefix: str) -> None:
    root = write_lt_lists(tmp_path, prefix, classnames=["tench", "goldfish", "great white shark"])
    m = build_manifest(name, root)
    assert m.splits.count("train") == 9 and m.splits.count("val") == 3 and m.splits.count("test") == 6
    assert m.descriptor.class_names == ("tench", "goldfish", "great white shark")
    assert m.ids[0] == "train/c0/0.jpg" and m.load(0).mode == "RGB"
    assert m.descriptor.groups["few"] == ("0", "1", "2")  # all < 20 training images
    (root / "classnames.txt").unlink()
    assert build_manifest(name, root).descriptor.class_names[2] == "class 2"
    train_list = root / f"{prefix}_train.txt"
    train_list.write_text(train_list.read_text() + "train/c0/missing.jpg 0\n")
    msg = _error(name, root)
    assert f"{train_list}, line 10" in msg and "missing.jpg" in msg
    assert len(build_manifest(name, root, check_files=False)) == 19
    assert len(build_manifest(name, root, check_files="false")) == 19  # as typed on the command line
    train_list.write_text("train/c0/0.jpg\n")
    assert "line 1: 'train/c0/0.jpg' has no label" in _error(name, root)


def test_lt_lists_in_another_folder(tmp_path: Path) -> None:
    lists = write_lt_lists(tmp_path / "lists")
    m = build_manifest("imagenet-lt", tmp_path / "lists", lists=str(tmp_path / "lists"))
    assert len(m) == 18
    assert "training list not found" in _error("imagenet-lt", tmp_path, lists="elsewhere")
    assert lists.exists()


def test_inat2018(tmp_path: Path) -> None:
    root = write_inat2018(tmp_path)
    m = build_manifest("inat2018", root)
    assert m.descriptor.class_ids == ("10", "11", "12") and m.descriptor.class_names[1] == "Species 1"
    assert m.splits.count("train") == 7 and m.splits.count("test") == 3
    assert np.bincount(m.labels[:7]).tolist() == [4, 2, 1]
    assert m.load(m.splits.index("test")).mode == "RGB"
    val = root / "val2018.json"
    val.write_text(val.read_text().replace('"image_id": 1007', '"image_id": 99'))
    assert "has no label" in _error("inat2018", root)


# --- real data in ../shared/data (opt-in) ---------------------------------------------


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")


@pytest.mark.shared_data
@needs_shared
def test_shared_ham10000() -> None:
    m = build_manifest("isic2018", SHARED / "ham10000")
    counts = dict(zip(m.descriptor.class_ids, np.bincount(m.labels, minlength=7).tolist(), strict=True))
    assert counts == {"NV": 6705, "MEL": 1113, "BKL": 1099, "BCC": 514, "AKIEC": 327, "VASC": 142, "DF": 115}
    img = m.load(0)
    assert img.size == (200, 150) and img.mode == "RGB"


@pytest.mark.shared_data
@needs_shared
def test_shared_medmnist() -> None:
    m = build_manifest("medmnist", SHARED / "medmnist", subset="pneumoniamnist")
    assert [m.splits.count(s) for s in ("train", "val", "test")] == [4708, 524, 624]
    assert m.arrays.shape == (5856, 28, 28, 1)
    assert np.bincount(m.labels[np.array(m.splits) == "train"]).tolist() == [1214, 3494]
    b = build_manifest("medmnist", SHARED / "medmnist", subset="breastmnist")  # flat (N,) labels
    assert [b.splits.count(s) for s in ("train", "val", "test")] == [546, 78, 156]


@pytest.mark.shared_data
@needs_shared
def test_shared_aptos_csv(tmp_path: Path) -> None:
    shutil.copy(SHARED / "aptos2019" / "train.csv", tmp_path / "train.csv")
    assert "3662 of 3662 images" in _error("aptos2019", tmp_path, images=".")
    (tmp_path / "train_images").mkdir()
    png = image_bytes(0)
    for line in (tmp_path / "train.csv").read_text().splitlines()[1:]:
        (tmp_path / "train_images" / f"{line.split(',')[0]}.png").write_bytes(png)
    m = build_manifest("aptos2019", tmp_path)
    assert np.bincount(m.labels).tolist() == [1805, 370, 999, 193, 295]
    assert isinstance(m.load(0), Image.Image)
