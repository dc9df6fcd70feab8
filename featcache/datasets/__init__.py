"""Data set adapters: each turns a folder in a layout users already have into a :class:`Manifest`.

Importing this package registers every adapter in :data:`DATASETS`; build one with
``build_manifest("isic2018", root)``. See :mod:`featcache.datasets.base` for the contract.
"""

from featcache.datasets import (  # noqa: F401  (imported to register the adapters)
    aptos2019,
    cifar,
    csvlist,
    folder,
    inat,
    isic2018,
    lt_lists,
    medmnist,
    synthetic,
)
from featcache.datasets.base import (
    DATASETS,
    Descriptor,
    Manifest,
    build_manifest,
    class_counts,
    load_descriptor,
    open_rgb,
)
from featcache.datasets.catalog import describe_datasets

__all__ = [
    "DATASETS",
    "Descriptor",
    "Manifest",
    "build_manifest",
    "class_counts",
    "describe_datasets",
    "load_descriptor",
    "open_rgb",
]
