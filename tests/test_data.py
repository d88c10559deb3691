"""Tests for funcgrad.data: bundled digits, synthetic spirals and the .npz loader."""

from __future__ import annotations

import gc
import os
import re
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from funcgrad.data import DIGITS_ATTRIBUTION, Dataset, digits, load_npz, spirals

DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    with (resources.files("funcgrad.data") / "digits.npz").open("rb") as handle:
        with np.load(handle, allow_pickle=False) as archive:
            return archive["images"], archive["labels"]


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(label, features...) rows in lexicographic order: a multiset fingerprint."""
    table = np.column_stack([y.astype(np.float64), x.astype(np.float64)])
    return table[np.lexsort(table.T[::-1])]


def _assert_partition(ds: Dataset, x_all: np.ndarray, y_all: np.ndarray) -> None:
    """Train + test is exactly the full data as a multiset: nothing lost, nothing repeated."""
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert len(y) == len(y_all)
    np.testing.assert_array_equal(_sorted_rows(x, y), _sorted_rows(x_all, y_all))


# ----------------------------------------------------------------------------- digits


def test_bundled_digits_file_contents():
    images, labels = _raw_digits()
    assert images.dtype == np.uint8 and images.shape == (1797, 64)
    assert labels.dtype == np.uint8 and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels, minlength=10).tolist() == DIGITS_CLASS_COUNTS


def test_digits_shapes_dtypes_and_counts():
    ds = digits()
    assert isinstance(ds, Dataset)
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.x_train.shape[1] == ds.x_test.shape[1] == 64
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    assert counts.tolist() == DIGITS_CLASS_COUNTS
    assert 0.18 < len(ds.y_test) / 1797 < 0.22


def test_digits_normalize():
    scaled = digits(seed=3)
    raw = digits(seed=3, normalize=False)
    assert scaled.x_train.min() == 0.0 and scaled.x_train.max() == 1.0
    assert raw.x_train.max() == 16.0 and raw.x_train.dtype == np.float32
    np.testing.assert_array_equal(raw.x_train / 16, scaled.x_train)
    np.testing.assert_array_equal(raw.y_test, scaled.y_test)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_digits_split_is_a_partition(seed):
    images, labels = _raw_digits()
    ds = digits(seed=seed, normalize=False)
    _assert_partition(ds, images, labels)


def test_digits_same_seed_same_split():
    a, b = digits(seed=7), digits(seed=7)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_digits_different_seed_different_split():
    a, b = digits(seed=0), digits(seed=1)
    assert len(a.y_test) == len(b.y_test)
    assert not np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(_sorted_rows(a.x_test, a.y_test), _sorted_rows(b.x_test, b.y_test))


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 0.75])
def test_digits_split_is_stratified(fraction):
    ds = digits(test_fraction=fraction, seed=2)
    test_counts = np.bincount(ds.y_test, minlength=10)
    for label, total in enumerate(DIGITS_CLASS_COUNTS):
        assert test_counts[label] >= 1
        assert abs(test_counts[label] - fraction * total) <= 1, (label, test_counts[label])


def test_digits_test_split_is_shuffled():
    ds = digits()
    # labels are interleaved, not grouped class by class
    assert np.count_nonzero(np.diff(ds.y_test)) > 100
    assert np.count_nonzero(np.diff(ds.y_train)) > 500


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan")])
def test_digits_rejects_bad_test_fraction(bad):
    with pytest.raises(ValueError, match=r"^digits: test_fraction") as info:
        digits(test_fraction=bad)
    assert "expected 0 < test_fraction < 1" in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", ["0.2", None, True])
def test_digits_rejects_non_numeric_test_fraction(bad):
    with pytest.raises(TypeError, match=r"^digits: test_fraction"):
        digits(test_fraction=bad)


def test_digits_rejects_bad_seed_and_normalize():
    with pytest.raises(ValueError, match=r"^digits: seed .*got -1"):
        digits(seed=-1)
    with pytest.raises(TypeError, match=r"^digits: seed .*got 1.5"):
        digits(seed=1.5)
    with pytest.raises(TypeError, match=r"^digits: normalize"):
        digits(normalize="yes")


def test_digits_attribution():
    assert "Alpaydin" in DIGITS_ATTRIBUTION and "Kaynak" in DIGITS_ATTRIBUTION
    assert "CC BY 4.0" in DIGITS_ATTRIBUTION
    assert "https://doi.org/10.24432/C50P49" in DIGITS_ATTRIBUTION


# ----------------------------------------------------------------------------- spirals


def test_spirals_shapes_and_dtypes():
    ds = spirals(n_per_class=100, num_classes=3, test_fraction=0.25)
    assert ds.name == "spirals" and ds.num_classes == 3
    assert ds.x_train.shape == (225, 2) and ds.x_test.shape == (75, 2)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert np.bincount(ds.y_test).tolist() == [25, 25, 25]
    assert np.bincount(ds.y_train).tolist() == [75, 75, 75]
    radius = np.linalg.norm(np.concatenate([ds.x_train, ds.x_test]), axis=1)
    assert radius.max() <= 1.0 + 1e-6


def test_spirals_defaults():
    ds = spirals()
    assert len(ds.y_train) + len(ds.y_test) == 400 and ds.num_classes == 2


def test_spirals_deterministic_by_seed():
    a, b, c = spirals(seed=5), spirals(seed=5), spirals(seed=6)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)


def test_spirals_noise_free_points_lie_on_their_arms():
    ds = spirals(n_per_class=50, num_classes=2, noise=0.0)
    x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
    y = np.concatenate([ds.y_train, ds.y_test])
    r = np.linalg.norm(x, axis=1)
    keep = r > 0.05
    theta = np.arctan2(x[keep, 1], x[keep, 0])
    expected = np.pi * y[keep] + 3 * np.pi * r[keep]
    wrapped = np.angle(np.exp(1j * (theta - expected)))
    assert np.abs(wrapped).max() < 1e-4
    # the two arms are distinct point sets (interleaved, not identical)
    assert not np.allclose(np.sort(x[y == 0], axis=0), np.sort(x[y == 1], axis=0))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"n_per_class": 0}, ValueError, r"^spirals: n_per_class .*>= 2.*got 0"),
        ({"n_per_class": 1}, ValueError, r"^spirals: n_per_class .*got 1"),
        ({"n_per_class": 10.0}, TypeError, r"^spirals: n_per_class .*integer.*got 10.0"),
        ({"num_classes": 1}, ValueError, r"^spirals: num_classes .*>= 2.*got 1"),
        ({"num_classes": True}, TypeError, r"^spirals: num_classes .*got True"),
        ({"noise": -0.1}, ValueError, r"^spirals: noise .*>= 0.*got -0.1"),
        ({"noise": float("inf")}, ValueError, r"^spirals: noise .*finite.*got inf"),
        ({"noise": "0.1"}, TypeError, r"^spirals: noise .*real.*got '0.1'"),
        ({"seed": -3}, ValueError, r"^spirals: seed .*got -3"),
        ({"test_fraction": 1.0}, ValueError, r"^spirals: test_fraction .*got 1.0"),
    ],
)
def test_spirals_validates_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        spirals(**kwargs)


# ----------------------------------------------------------------------------- load_npz


def _write(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _xy(n: int = 20, features: int = 3, classes: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((n, features)),
        "y": np.arange(n, dtype=np.int64) % classes,
    }


def test_load_npz_roundtrip(tmp_path):
    arrays = _xy(n=30, classes=3)
    path = _write(tmp_path, "my_set.npz", **arrays)
    ds = load_npz(path, test_fraction=0.2, seed=1)
    assert ds.name == "my_set" and ds.num_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.shape == (24, 3) and ds.x_test.shape == (6, 3)
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]
    _assert_partition(ds, arrays["x"].astype(np.float32), arrays["y"])


def test_load_npz_accepts_str_path_and_is_deterministic(tmp_path):
    path = _write(tmp_path, **_xy(n=40))
    a, b, c = load_npz(str(path), seed=4), load_npz(path, seed=4), load_npz(path, seed=5)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


def test_load_npz_flattens_trailing_axes(tmp_path):
    x = np.arange(6 * 2 * 3 * 4, dtype=np.uint8).reshape(6, 2, 3, 4)
    y = np.array([0, 1, 0, 1, 0, 1], dtype=np.uint8)
    ds = load_npz(_write(tmp_path, x=x, y=y))
    assert ds.x_train.shape[1] == 24 and ds.x_test.shape[1] == 24
    _assert_partition(ds, x.reshape(6, -1), y)


def test_load_npz_num_classes_from_max_label(tmp_path):
    x = np.zeros((6, 2))
    ds = load_npz(_write(tmp_path, x=x, y=np.array([0, 2, 1, 2, 0, 1])))
    assert ds.num_classes == 3


@pytest.mark.parametrize(
    ("y", "got"),
    [
        ([0, 4, 0, 4], r"got labels \[0, 4\] \(max 4 would make a 5-way classifier\)"),
        ([0, 1, 2, 99999] * 2, r"got labels \[0, 1, 2, 99999\] \(max 99999 .*100000-way"),
        (list(range(7)) + [50], r"got labels \[0, 1, 2, 3, 4, \.\.\., 50\]"),
    ],
    ids=["gap", "sparse", "long"],
)
def test_load_npz_rejects_label_gaps_with_a_remap_hint(tmp_path, y, got):
    y = np.array(y)
    path = _write(tmp_path, x=np.zeros((len(y), 2)), y=y)
    with pytest.raises(ValueError, match=r"^load_npz: class labels must be 0\.\.K-1") as info:
        load_npz(path)
    assert re.search(got, str(info.value)), str(info.value)
    assert "np.unique(y, return_inverse=True)" in str(info.value)


def test_load_npz_rejects_label_gaps_across_a_given_test_split(tmp_path):
    path = _write(tmp_path, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]),
                  x_test=np.zeros((2, 2)), y_test=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"expected 3 classes numbered 0\.\.2, got labels"):
        load_npz(path)


@pytest.mark.parametrize("split", ["whole", "given"])
def test_load_npz_rejects_one_class_data(tmp_path, split):
    arrays = {"x": np.zeros((6, 2)), "y": np.full(6, 3)}
    if split == "given":
        arrays.update(x_test=np.zeros((2, 2)), y_test=np.full(2, 3))
    names = "'y'" if split == "whole" else "'y' and 'y_test'"
    with pytest.raises(ValueError) as info:
        load_npz(_write(tmp_path, **arrays))
    assert str(info.value) == (
        f"load_npz: array {names} must hold at least 2 classes; expected labels 0..K-1 "
        "with K >= 2, got only class 3"
    )


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else set()


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_load_npz_truncated_file_is_a_clear_error_and_is_closed(tmp_path, cut):
    whole = _write(tmp_path, "whole.npz", **_xy(n=200))
    data = whole.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(len(data) * cut)])
    before = _open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as info:
            load_npz(path)
        leaked = _open_fds() - before  # while the error (and its traceback) is alive
        message = str(info.value)
        del info
        gc.collect()
    assert message.startswith(f"load_npz: could not read {str(path)!r}: not a valid .npz file")
    assert "BadZipFile" in message
    assert not leaked
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_load_npz_two_samples_split_into_one_and_one(tmp_path):
    ds = load_npz(_write(tmp_path, x=np.eye(2), y=np.array([0, 1])))
    assert len(ds.y_train) == 1 and len(ds.y_test) == 1


def test_load_npz_uses_given_test_split(tmp_path):
    x_test = np.full((3, 2, 2), 7.0)
    y_test = np.array([2, 0, 1], dtype=np.int16)
    path = _write(
        tmp_path, x=np.ones((5, 2, 2)), y=np.array([0, 1, 0, 1, 1]), x_test=x_test, y_test=y_test
    )
    ds = load_npz(path, seed=99)
    np.testing.assert_array_equal(ds.x_train, np.ones((5, 4), dtype=np.float32))
    np.testing.assert_array_equal(ds.y_train, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(ds.x_test, np.full((3, 4), 7.0, dtype=np.float32))
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.y_test.dtype == np.int32
    assert ds.num_classes == 3


def test_load_npz_missing_file(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=r"^load_npz: file not found") as info:
        load_npz(missing)
    assert str(missing) in str(info.value)


def test_load_npz_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^load_npz: "):
        load_npz(tmp_path)


@pytest.mark.parametrize("missing", ["x", "y"])
def test_load_npz_missing_array(tmp_path, missing):
    arrays = _xy()
    del arrays[missing]
    arrays["extra"] = np.zeros(3)
    with pytest.raises(ValueError, match=rf"^load_npz: missing array '{missing}'") as info:
        load_npz(_write(tmp_path, **arrays))
    message = str(info.value)
    present = "y" if missing == "x" else "x"
    assert f"got keys ['extra', '{present}']" in message


@pytest.mark.parametrize(("present", "absent"), [("x_test", "y_test"), ("y_test", "x_test")])
def test_load_npz_half_of_test_split(tmp_path, present, absent):
    arrays = _xy()
    arrays[present] = arrays["x"] if present == "x_test" else arrays["y"]
    with pytest.raises(ValueError, match=rf"^load_npz: array '{present}' .*'{absent}' is missing"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_float_labels(tmp_path):
    arrays = _xy()
    arrays["y"] = arrays["y"].astype(np.float32)
    with pytest.raises(TypeError) as info:
        load_npz(_write(tmp_path, **arrays))
    assert str(info.value) == (
        "load_npz: array 'y' must have an integer dtype (class labels), got float32"
    )


def test_load_npz_bool_labels_rejected(tmp_path):
    arrays = _xy()
    arrays["y"] = arrays["y"].astype(bool)
    with pytest.raises(TypeError, match=r"^load_npz: array 'y' must have an integer dtype"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_labels_must_be_1d(tmp_path):
    arrays = _xy()
    arrays["y"] = arrays["y"].reshape(-1, 1)
    with pytest.raises(ValueError, match=r"^load_npz: array 'y' must be 1-D.*\(20, 1\)"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_negative_labels(tmp_path):
    arrays = _xy()
    arrays["y"][3] = -2
    with pytest.raises(ValueError, match=r"^load_npz: array 'y' must hold non-negative.*got -2"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_negative_test_labels(tmp_path):
    arrays = _xy()
    arrays["x_test"], arrays["y_test"] = np.zeros((2, 3)), np.array([0, -1])
    with pytest.raises(ValueError, match=r"^load_npz: array 'y_test' must hold non-negative"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_x_must_be_at_least_2d(tmp_path):
    with pytest.raises(ValueError, match=r"^load_npz: array 'x' .*ndim >= 2, got shape \(4,\)"):
        load_npz(_write(tmp_path, x=np.arange(4.0), y=np.array([0, 1, 0, 1])))


def test_load_npz_x_needs_features(tmp_path):
    with pytest.raises(ValueError, match=r"^load_npz: array 'x' .*at least one feature"):
        load_npz(_write(tmp_path, x=np.zeros((4, 0)), y=np.array([0, 1, 0, 1])))


@pytest.mark.parametrize(
    "x",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.ones((2, 2), dtype=np.complex64),
        np.array([[1, 2], [3, 4]], dtype="datetime64[s]"),
    ],
    ids=["str", "complex", "datetime"],
)
def test_load_npz_x_must_be_real_numeric(tmp_path, x):
    with pytest.raises(TypeError, match=r"^load_npz: array 'x' must be a real numeric array"):
        load_npz(_write(tmp_path, x=x, y=np.array([0, 1])))


def test_load_npz_x_must_be_finite(tmp_path):
    arrays = _xy()
    arrays["x"][2, 1] = np.nan
    arrays["x"][5, 0] = np.inf
    with pytest.raises(ValueError, match=r"^load_npz: array 'x' must hold finite.*got 2 non"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_length_mismatch(tmp_path):
    x, y = np.zeros((5, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^load_npz: arrays 'x' and 'y' .*same number") as info:
        load_npz(_write(tmp_path, x=x, y=y))
    assert "x.shape=(5, 3)" in str(info.value) and "y.shape=(4,)" in str(info.value)


def test_load_npz_test_length_mismatch(tmp_path):
    arrays = _xy()
    arrays["x_test"], arrays["y_test"] = np.zeros((3, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match=r"^load_npz: arrays 'x_test' and 'y_test'") as info:
        load_npz(_write(tmp_path, **arrays))
    assert "x_test.shape=(3, 3)" in str(info.value) and "y_test.shape=(2,)" in str(info.value)


def test_load_npz_test_feature_mismatch(tmp_path):
    arrays = _xy(features=3)
    arrays["x_test"], arrays["y_test"] = np.zeros((2, 4)), np.array([0, 1])
    with pytest.raises(ValueError, match=r"^load_npz: arrays 'x' and 'x_test' .*feature shape"):
        load_npz(_write(tmp_path, **arrays))


def test_load_npz_empty_given_test_split(tmp_path):
    arrays = _xy()
    arrays["x_test"], arrays["y_test"] = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    with pytest.raises(ValueError, match=r"^load_npz: array 'y_test' must hold at least 1"):
        load_npz(_write(tmp_path, **arrays))


@pytest.mark.parametrize("n", [0, 1])
def test_load_npz_needs_two_samples(tmp_path, n):
    path = _write(tmp_path, x=np.zeros((n, 2)), y=np.zeros(n, dtype=np.int32))
    with pytest.raises(ValueError, match=rf"^load_npz: arrays 'x' and 'y' .*at least 2.*got {n}$"):
        load_npz(path)


@pytest.mark.parametrize("name", ["x", "y"])
def test_load_npz_object_array_needs_no_pickle(tmp_path, name):
    arrays = _xy(n=2)
    arrays[name] = np.array([[1, "a"], [2, "b"]] if name == "x" else [0, "1"], dtype=object)
    path = _write(tmp_path, **arrays)
    with pytest.raises(ValueError, match=rf"^load_npz: array '{name}' is an object array") as info:
        load_npz(path)
    assert "allow_pickle=False" in str(info.value)


def test_load_npz_not_an_archive(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not numpy data")
    with pytest.raises(ValueError, match=r"^load_npz: could not read .*garbage\.npz"):
        load_npz(garbage)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^load_npz: could not read .*empty\.npz"):
        load_npz(empty)


def test_load_npz_single_npy_file(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"^load_npz: .*one\.npy.* not an \.npz archive"):
        load_npz(path)


def test_load_npz_validates_split_arguments(tmp_path):
    path = _write(tmp_path, **_xy())
    with pytest.raises(ValueError, match=r"^load_npz: test_fraction .*got 0"):
        load_npz(path, test_fraction=0)
    with pytest.raises(ValueError, match=r"^load_npz: seed .*got -1"):
        load_npz(path, seed=-1)


# ----------------------------------------------------------------------------- Dataset


def test_dataset_is_frozen():
    ds = spirals(n_per_class=5)
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


def test_dataset_validates_fields():
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1], np.int32)
    Dataset(x, y, x, y, num_classes=2, name="ok")
    with pytest.raises(TypeError, match=r"^Dataset: x_train .*float32.*float64"):
        Dataset(x.astype(np.float64), y, x, y, num_classes=2, name="bad")
    with pytest.raises(TypeError, match=r"^Dataset: y_test .*int32.*int64"):
        Dataset(x, y, x, y.astype(np.int64), num_classes=2, name="bad")
    with pytest.raises(ValueError, match=re.escape("x_train.shape=(4, 2) and y_train.shape=(3,)")):
        Dataset(x, y[:3], x, y, num_classes=2, name="bad")
    with pytest.raises(ValueError, match=r"^Dataset: y_train labels must lie in \[0, num_classes"):
        Dataset(x, y + 1, x, y, num_classes=2, name="bad")


@pytest.mark.parametrize("k", [1, 0, True])
def test_dataset_needs_two_classes(k):
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int32)
    pattern = rf"^Dataset: num_classes must be an integer >= 2.*got {k}"
    with pytest.raises(ValueError, match=pattern):
        Dataset(x, y, x, y, num_classes=k, name="one")
