"""ml.data.source: splits read whole from a features folder (a local folder laid out like the lake), the splits a
search hands its trials, in memory or streamed by size, and the labels' moments."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.data import ParquetSplit, load_training_data, read_split
from ml.storage import DataError, S3Uri
from tests.support.synthetic_features import LocalLake, make_arrays, make_spec

FEATURES = S3Uri("lake", "datasets/d/features/snap")
ROWS = {"train": 40, "validation": 20, "test": 10}


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path)


def _write(lake: LocalLake, task: str = "classification", classes: int = 3) -> Any:
    spec = make_spec("d", "snap", task, classes, rows=ROWS)
    splits = make_arrays(spec, ROWS)
    lake.write_features(spec, splits, FEATURES)
    return spec, splits


def _write_split(lake: LocalLake, split: str, columns: dict[str, pa.Array], name: str = "part-00000.parquet") -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    lake.put(FEATURES.join(split, name), buffer.getvalue())


# -- splits


@pytest.mark.parametrize("task,classes", [("classification", 3), ("regression", 1)])
def test_a_split_reads_into_float32_features_in_spec_order(lake: LocalLake, task: str, classes: int) -> None:
    spec, splits = _write(lake, task, classes)
    split = read_split(FEATURES, "train", spec, lake.filesystem)  # Spark's _SUCCESS marker is ignored
    assert split.name == "train" and split.rows == ROWS["train"]
    assert split.X.dtype == np.float32 and split.X.flags["C_CONTIGUOUS"]
    assert split.X.shape == (ROWS["train"], len(spec.feature_columns))
    np.testing.assert_array_equal(split.X, splits["train"].X)
    assert split.y.dtype == (np.int64 if task == "classification" else np.float32)
    np.testing.assert_allclose(split.y, splits["train"].y)


def test_labels_only_reads_no_feature_columns(lake: LocalLake) -> None:
    spec, splits = _write(lake, "regression", 1)
    split = read_split(str(FEATURES), "train", spec, lake.filesystem, labels_only=True)
    assert split.X.shape == (ROWS["train"], 0)
    np.testing.assert_allclose(split.y, splits["train"].y)


def test_labels_only_needs_no_feature_columns(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "regression", 1, rows=ROWS)
    _write_split(lake, "train", {"label": pa.array([1.5, 2.5], pa.float32())})
    split = read_split(FEATURES, "train", spec, lake.filesystem, labels_only=True)
    assert split.X.shape == (2, 0) and split.y.tolist() == [1.5, 2.5]
    with pytest.raises(DataError, match=r"columns missing from the train split: \['x0'"):
        read_split(FEATURES, "train", spec, lake.filesystem)


def test_a_split_of_many_parts_and_row_groups_reads_in_order_and_every_part_is_checked(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3, rows={"train": 50})
    train = make_arrays(spec, {"train": 50})["train"]
    lake.write_features(spec, {"train": train}, FEATURES, parts=3, row_group_size=4)
    split = read_split(FEATURES, "train", spec, lake.filesystem)
    np.testing.assert_array_equal(split.X, train.X)
    np.testing.assert_array_equal(split.y, train.y)
    columns = {c: pa.array(np.zeros(2), pa.float32()) for c in spec.feature_columns if c != "x1"}
    _write_split(lake, "train", {**columns, "label": pa.array([0, 1], pa.int32())}, "part-99999.parquet")  # the last
    with pytest.raises(DataError, match=r"columns missing from the train split: \['x1'\]"):
        read_split(FEATURES, "train", spec, lake.filesystem)


def test_training_data_is_train_and_validation(lake: LocalLake) -> None:
    spec, splits = _write(lake)
    data = load_training_data(FEATURES, spec, lake.filesystem)
    assert data.spec == spec
    assert (data.train.rows, data.validation.rows) == (ROWS["train"], ROWS["validation"])
    np.testing.assert_array_equal(data.validation.X, splits["validation"].X)


def test_unknown_split(lake: LocalLake) -> None:
    spec, _ = _write(lake)
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        read_split(FEATURES, "holdout", spec, lake.filesystem)


def test_a_missing_split_folder_names_the_split(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3, rows=ROWS)
    with pytest.raises(DataError, match=r"features/snap/train: cannot read the train split"):
        read_split(FEATURES, "train", spec, lake.filesystem)


def test_a_part_that_is_not_parquet_names_the_split(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3, rows=ROWS)
    lake.put(FEATURES.join("train", "part-00000.parquet"), b"not parquet at all")
    with pytest.raises(DataError, match=r"features/snap/train: cannot read the train split"):
        read_split(FEATURES, "train", spec, lake.filesystem)


def _columns(spec: Any, rows: int = 4, **overrides: pa.Array) -> dict[str, pa.Array]:
    columns: dict[str, pa.Array] = {c: pa.array(np.zeros(rows), pa.float32()) for c in spec.feature_columns}
    columns["label"] = pa.array([0] * rows, pa.int32())
    columns.update(overrides)
    return columns


@pytest.mark.parametrize(
    "change,message",
    [
        ({"x1": None}, r"columns missing from the train split: \['x1'\]"),
        ({"x0": pa.array([0.0, None, 1.0, 2.0], pa.float32())}, "column 'x0' has 1 nulls"),
        ({"label": pa.array([0, None, 1, 1], pa.int32())}, "column 'label' has 1 nulls"),
        ({"label": pa.array([0, 3, 1, -1], pa.int32())}, r"2 labels outside 0..2"),
        ({"x2": pa.array([0.0, np.inf, 1.0, 2.0], pa.float32())}, "non-finite feature values in the train split"),
    ],
)
def test_bad_classification_splits_name_the_problem(lake: LocalLake, change: dict, message: str) -> None:
    spec = make_spec("d", "snap", "classification", 3, rows=ROWS)
    columns = _columns(spec, **{k: v for k, v in change.items() if v is not None})
    for key in [k for k, v in change.items() if v is None]:
        del columns[key]
    _write_split(lake, "train", columns)
    with pytest.raises(DataError, match=message):
        read_split(FEATURES, "train", spec, lake.filesystem)


def test_non_finite_regression_labels_are_refused(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "regression", 1, rows=ROWS)
    _write_split(lake, "train", _columns(spec, label=pa.array([1.0, np.nan, 2.0, 3.0], pa.float64())))
    with pytest.raises(DataError, match="non-finite labels in the train split"):
        read_split(FEATURES, "train", spec, lake.filesystem)


def test_an_empty_split_is_refused_for_training(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3, rows=ROWS)
    _write_split(lake, "train", _columns(spec))
    _write_split(lake, "validation", _columns(spec, rows=0))
    with pytest.raises(DataError, match=r"empty split \(train 4 rows, validation 0 rows\)"):
        load_training_data(FEATURES, spec, lake.filesystem)


# -- what a search hands its trials


def test_labels_are_read_without_the_features_and_their_moments_are_exact(lake: LocalLake) -> None:
    from ml.data import label_moments

    spec = make_spec("d", "snap", "regression", 1, rows={"train": 100})
    train = make_arrays(spec, {"train": 100})["train"]
    lake.write_features(spec, {"train": train}, FEATURES, parts=3, row_group_size=7)
    split = ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)
    labels = list(split.labels(lake.filesystem, block_rows=4))
    assert max(len(block) for block in labels) <= 4
    np.testing.assert_array_equal(np.concatenate(labels), train.y)
    mean, std = label_moments(labels)
    assert (mean, std) == pytest.approx((float(np.mean(train.y, dtype=np.float64)), float(np.std(train.y))), rel=1e-6)
    assert label_moments([train.y]) == pytest.approx((mean, std), rel=1e-12)  # one block: the same moments


def test_label_moments_skip_empty_blocks_and_stay_exact_far_from_zero() -> None:
    from ml.data import label_moments

    assert label_moments([]) == (0.0, 0.0)
    assert label_moments([np.array([], dtype=np.float32)]) == (0.0, 0.0)
    values = 1e9 + np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # a naive sum of squares loses the spread here
    mean, std = label_moments([values[:2], np.array([]), values[2:3], values[3:]])
    assert (mean, std) == pytest.approx((1e9 + 4.0, 2.0), rel=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_splits_are_cached_or_streamed_by_their_size(lake: LocalLake, task: str) -> None:
    from ml.data import StreamingData, TrainingData, training_data

    spec = make_spec("d", "snap", task, 3 if task == "classification" else 1, rows={"train": 60, "validation": 20})
    splits = make_arrays(spec, {"train": 60, "validation": 20})
    lake.write_features(spec, splits, FEATURES, row_group_size=7)
    size = (60 + 20) * (len(spec.feature_columns) * 4 + (8 if task == "classification" else 4))
    cached = training_data(FEATURES, spec, lake.filesystem, trial_filesystem="keyless", cache_bytes=size)
    assert isinstance(cached, TrainingData)
    np.testing.assert_array_equal(cached.train.X, splits["train"].X)
    streamed = training_data(FEATURES, spec, lake.filesystem, trial_filesystem="keyless", cache_bytes=size - 1)
    assert isinstance(streamed, StreamingData)
    assert (streamed.train.rows, streamed.validation.rows, streamed.filesystem) == (60, 20, "keyless")
    if task == "regression":
        assert streamed.target_mean == pytest.approx(float(np.mean(splits["train"].y, dtype=np.float64)), rel=1e-6)
    else:
        assert (streamed.target_mean, streamed.target_std) == (0.0, 1.0)
    assert pickle.loads(pickle.dumps(streamed)) == streamed  # small: the footers, never the rows


def test_an_empty_training_split_is_refused(lake: LocalLake) -> None:
    from ml.data import training_data

    spec = make_spec("d", "snap", "classification", 3, rows={"train": 0, "validation": 5})
    lake.write_features(spec, make_arrays(spec, {"train": 0, "validation": 5}), FEATURES, parts=1)
    with pytest.raises(DataError, match="empty split"):
        training_data(FEATURES, spec, lake.filesystem, trial_filesystem=None, cache_bytes=0)
