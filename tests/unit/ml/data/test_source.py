"""ml.data.source: the splits a search hands its trials, in memory or streamed by size, and the labels' moments."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ml.data import ParquetSplit
from ml.storage import DataError, S3Uri
from tests.support.synthetic_features import LocalLake, make_arrays, make_spec

FEATURES = S3Uri("lake", "datasets/d/features/snap")


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path)


def test_labels_are_read_without_the_features_and_their_moments_are_exact(lake: LocalLake) -> None:
    from ml.data import label_moments

    spec = make_spec("d", "snap", "regression", 1, rows={"train": 100})
    train = make_arrays(spec, {"train": 100})["train"]
    lake.write_features(spec, {"train": train}, FEATURES, parts=3, row_group_size=7)
    split = ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)
    labels = list(split.labels(lake.filesystem, block_rows=4))
    assert max(len(block) for block in labels) <= 4
    np.testing.assert_array_equal(np.concatenate(labels), train.y)
    mean, std = label_moments(split, lake.filesystem)
    assert (mean, std) == pytest.approx((float(np.mean(train.y, dtype=np.float64)), float(np.std(train.y))), rel=1e-6)


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
