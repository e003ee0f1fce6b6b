"""Splits read whole, and what a search hands its trials, decided by size: the splits in memory (`TrainingData`), or
their footers for the trials to stream from S3 (`StreamingData`). Every read goes through ParquetSplit's reader
(ml.data.stream), so a split read whole is checked and converted as a streamed one is."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.data.arrays import SplitArrays, TrainingData
from ml.data.stream import ParquetSplit
from ml.features import FeatureSpec
from ml.storage import DataError, S3Uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamingData:
    """What a trial needs when its splits stay in S3: the spec, the splits' footers, a filesystem that pickles without
    keys (ml.keyless_s3: every trial and worker signs with its own), and the training labels' mean and std (what
    regression standardises with; 0 and 1 for classification), computed once by the driver from the labels alone."""

    spec: FeatureSpec
    train: ParquetSplit
    validation: ParquetSplit
    filesystem: Any
    target_mean: float = 0.0
    target_std: float = 1.0


def read_split(
    features: S3Uri | str, split: str, spec: FeatureSpec, filesystem: Any, *, labels_only: bool = False
) -> SplitArrays:
    """Read one split's Parquet parts (Spark's `_SUCCESS` and other `_`/`.` files are ignored) into numpy;
    `labels_only`: the label alone (X has no columns), and the feature columns need not be there."""
    if labels_only:
        spec = dataclasses.replace(spec, numeric=[], categorical=[])  # no feature columns to check or read
    return _read_whole(ParquetSplit.open(features, split, spec, filesystem), filesystem)


def load_training_data(features: S3Uri | str, spec: FeatureSpec, filesystem: Any) -> TrainingData:
    """The spec plus the train and validation splits (the test split stays untouched until evaluation)."""
    train, validation = _training_splits(features, spec, filesystem)
    return TrainingData(spec, _read_whole(train, filesystem), _read_whole(validation, filesystem))


def _read_whole(split: ParquetSplit, filesystem: Any) -> SplitArrays:
    arrays = split.read(filesystem)
    log.info("read %s split: %d rows x %d features from %s", split.name, arrays.rows, arrays.X.shape[1], split.uri)
    return arrays


def _training_splits(features: S3Uri | str, spec: FeatureSpec, filesystem: Any) -> tuple[ParquetSplit, ParquetSplit]:
    """The train and validation splits' footers; DataError when either has no rows."""
    train = ParquetSplit.open(features, "train", spec, filesystem)
    validation = ParquetSplit.open(features, "validation", spec, filesystem)
    if train.rows == 0 or validation.rows == 0:
        raise DataError(f"{features}: empty split (train {train.rows} rows, validation {validation.rows} rows)")
    return train, validation


def label_moments(labels: Iterable[np.ndarray]) -> tuple[float, float]:
    """The mean and (population) standard deviation of labels given block by block (a split's `labels()`, or one
    array): Chan's pairwise update, exact in float64 whatever the number of rows, with one block in memory; (0, 0)
    for no labels."""
    count, mean, squares = 0, 0.0, 0.0
    for block in labels:
        values = block.astype(np.float64)
        n = len(values)
        if not n:
            continue
        block_mean = float(values.mean())
        block_squares = float(((values - block_mean) ** 2).sum())
        total = count + n
        delta = block_mean - mean
        mean += delta * n / total
        squares += block_squares + delta * delta * count * n / total
        count = total
    return mean, (squares / count) ** 0.5 if count else 0.0


def training_data(
    features: S3Uri | str, spec: FeatureSpec, filesystem: Any, *, trial_filesystem: Any, cache_bytes: int
) -> TrainingData | StreamingData:
    """The train and validation splits for a search's trials, decided by size: read into memory here when their
    arrays take at most `cache_bytes` (shared with the trials through Ray's object store: the fastest path, B4), else
    described by their footers for every trial to stream from S3 with `trial_filesystem` (memory flat in the number
    of rows, B9). Footers are read either way; an empty split is a DataError."""
    train, validation = _training_splits(features, spec, filesystem)
    size = train.array_bytes + validation.array_bytes
    if size <= cache_bytes:
        log.info("splits of %.1f MB cached in memory (limit %.1f MB)", size / 2**20, cache_bytes / 2**20)
        return TrainingData(spec, train.read(filesystem), validation.read(filesystem))
    mean, std = label_moments(train.labels(filesystem)) if spec.task != "classification" else (0.0, 1.0)
    log.info(
        "splits of %.1f MB (%d + %d rows) streamed from S3 by the trials (cache limit %.1f MB)",
        size / 2**20,
        train.rows,
        validation.rows,
        cache_bytes / 2**20,
    )
    return StreamingData(spec, train, validation, trial_filesystem, mean, std)
