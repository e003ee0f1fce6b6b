"""Feature splits from S3 into tensors, and batches by slicing them.

A split (`train/`, `validation/`, `test/` under the features URI) is read once with pyarrow into a float32 matrix
in `spec.feature_columns` order plus a label vector; training then shuffles with a seeded generator and slices
contiguous batches: no per-row Dataset/DataLoader, so the loader costs one gather per epoch.

For tuning, the driver reads the splits once and Tune hands them to every trial through `tune.with_parameters`,
which puts the numpy arrays into Ray's object store: trials on one node share them without copying. Reads take a
pyarrow filesystem (ml.clients.arrow_filesystem) and an S3 client for the spec.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.features import LABEL_COLUMN, SPLITS, FeatureSpec
from ml.storage import NOT_FOUND_CODES, DataError, S3Uri, error_code, feature_spec_uri, read_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitArrays:
    """One split as numpy: X float32 (rows x features), y int64 class indices or float32 values."""

    name: str
    X: np.ndarray
    y: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class TrainingData:
    """What a trial needs: the spec and the train and validation splits."""

    spec: FeatureSpec
    train: SplitArrays
    validation: SplitArrays


def load_feature_spec(features: S3Uri | str, client: Any) -> FeatureSpec:
    """The spec beside the splits; its presence marks the features complete (it is written last)."""
    from botocore.exceptions import ClientError

    uri = feature_spec_uri(features)
    try:
        return FeatureSpec.from_dict(read_json(uri, client))
    except ClientError as error:
        if error_code(error) in NOT_FOUND_CODES:
            raise DataError(f"{uri}: no feature spec (has preprocessing finished for this snapshot?)") from error
        raise


def read_split(
    features: S3Uri | str, split: str, spec: FeatureSpec, filesystem: Any, *, labels_only: bool = False
) -> SplitArrays:
    """Read one split's Parquet parts (Spark's `_SUCCESS` and other `_`/`.` files are ignored) into numpy."""
    import pyarrow.dataset as ds

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    base = features if isinstance(features, S3Uri) else S3Uri.parse(features)
    uri = base.join(split)
    try:
        dataset = ds.dataset(f"{uri.bucket}/{uri.key}", filesystem=filesystem, format="parquet")
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"{uri}: cannot read the {split} split: {error}") from error
    names = set(dataset.schema.names)
    wanted = [] if labels_only else list(spec.feature_columns)
    missing = [c for c in [*wanted, LABEL_COLUMN] if c not in names]
    if missing:
        raise DataError(f"{uri}: columns missing from the {split} split: {missing[:10]}")
    table = dataset.to_table(columns=[*wanted, LABEL_COLUMN])

    # Fill a preallocated C-order float32 matrix column by column: no intermediate float64 copy of the whole table.
    X = np.empty((table.num_rows, len(wanted)), dtype=np.float32)
    for index, column in enumerate(wanted):
        chunked = table.column(column)
        if chunked.null_count:
            raise DataError(f"{uri}: column {column!r} has {chunked.null_count} nulls")
        X[:, index] = chunked.to_numpy()
    label = table.column(LABEL_COLUMN)
    if label.null_count:
        raise DataError(f"{uri}: column {LABEL_COLUMN!r} has {label.null_count} nulls")
    raw_y = label.to_numpy()
    if spec.task == "classification":
        y = raw_y.astype(np.int64)
        bad = (y < 0) | (y >= spec.num_outputs)
        if bad.any():
            raise DataError(
                f"{uri}: {int(bad.sum())} labels outside 0..{spec.num_outputs - 1} (classes {spec.classes})"
            )
    else:
        y = raw_y.astype(np.float32)
    if not labels_only and not np.isfinite(X).all():
        raise DataError(f"{uri}: non-finite feature values in the {split} split")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{uri}: non-finite labels in the {split} split")
    log.info("read %s split: %d rows x %d features from %s", split, X.shape[0], X.shape[1], uri)
    return SplitArrays(split, X, y)


def load_training_data(features: S3Uri | str, spec: FeatureSpec, filesystem: Any) -> TrainingData:
    """The spec plus the train and validation splits (the test split stays untouched until evaluation)."""
    train = read_split(features, "train", spec, filesystem)
    validation = read_split(features, "validation", spec, filesystem)
    if train.rows == 0 or validation.rows == 0:
        raise DataError(f"{features}: empty split (train {train.rows} rows, validation {validation.rows} rows)")
    return TrainingData(spec, train, validation)


def to_tensors(split: SplitArrays) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-copy tensors over the arrays (object-store arrays are read-only; we never write to X or y)."""
    import torch

    with warnings.catch_warnings():
        # torch warns about read-only arrays; slicing and gathers never write into them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        X = torch.from_numpy(split.X)
        y = torch.from_numpy(split.y)
    return X, y


class TensorBatches:
    """Shuffled mini-batches by slicing tensors; the shuffle comes from a seeded torch.Generator.

    Each epoch draws one permutation, gathers X and y once, then yields contiguous views. A trailing batch of a single
    row is dropped in training (BatchNorm cannot normalise one row, and one row adds nothing but noise).
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_singleton: bool = True,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator or torch.Generator().manual_seed(0)
        self.drop_singleton = drop_singleton

    def __len__(self) -> int:
        n = self.X.shape[0]
        full, rest = divmod(n, self.batch_size)
        keep_rest = rest > 1 or (rest == 1 and (not self.drop_singleton or n == 1))
        return full + (1 if keep_rest else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        n = self.X.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            X, y = self.X[order], self.y[order]
        else:
            X, y = self.X, self.y
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if stop - start == 1 and self.drop_singleton and n > 1:
                break
            yield X[start:stop], y[start:stop]
