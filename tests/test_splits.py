"""Protocols: tfa-lt's balanced test set, official splits, defaults and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.datasets.base import Descriptor
from featcache.errors import FeatcacheError
from featcache.splits import make_split

DESC = Descriptor("toy", ("a", "b", "c"), ("a", "b", "c"), protocol="tfa-lt", test_per_class=5,
                  groups={"many": ("a",), "medium": ("b",), "few": ("c",)})
LABELS = np.repeat([0, 1, 2], [100, 30, 8])


def test_tfa_lt_balanced_test_set_rest_trains_seeded() -> None:
    splits = np.array([""] * len(LABELS), dtype=object)
    s = make_split(LABELS, splits, DESC, None, seed=0)
    assert s.protocol == "tfa-lt"
    assert np.bincount(LABELS[s.test]).tolist() == [5, 5, 5]
    assert np.intersect1d(s.train, s.test).size == 0 and len(s.train) + len(s.test) == len(LABELS)
    assert s.train_counts.tolist() == [95, 25, 3]
    assert s.groups == {"many": [0], "medium": [1], "few": [2]}
    again = make_split(LABELS, splits, DESC, None, seed=0)
    other = make_split(LABELS, splits, DESC, None, seed=1)
    assert np.array_equal(s.test, again.test) and not np.array_equal(s.test, other.test)
    frame = s.to_frame([f"id{i}" for i in range(len(LABELS))])
    assert frame.height == len(LABELS) and set(frame["split"].unique()) == {"train", "test"}


def test_tfa_lt_refuses_a_class_smaller_than_the_test_size() -> None:
    splits = np.array([""] * len(LABELS), dtype=object)
    with pytest.raises(FeatcacheError, match="class 'c' has only 8"):
        make_split(LABELS, splits, DESC, "tfa-lt", 0, test_per_class=8)


def test_official_is_default_with_a_test_split_and_validation_is_carved() -> None:
    splits = np.array(["train"] * len(LABELS), dtype=object)
    splits[::4] = "test"
    s = make_split(LABELS, splits, DESC, None, 0, val_fraction=0.2)
    assert s.protocol == "official"
    assert np.array_equal(s.test, np.flatnonzero(splits == "test"))
    assert len(s.val) > 0 and np.intersect1d(s.val, s.train).size == 0
    lift = make_split(LABELS, splits, DESC, "lift", 0)
    assert lift.groups["few"] == [2] and lift.groups["many"] == []


def test_no_protocol_anywhere_says_what_to_pass() -> None:
    desc = Descriptor("toy", ("a", "b"), ("a", "b"))
    with pytest.raises(FeatcacheError, match="--protocol tfa-lt"):
        make_split(np.array([0, 1]), np.array(["", ""], dtype=object), desc, None, 0)
    with pytest.raises(FeatcacheError, match="Did you mean 'official'"):
        make_split(np.array([0, 1]), np.array(["", ""], dtype=object), desc, "oficial", 0)
