"""Feature splits as arrays in memory, and batches by slicing tensors over them.

A split (`train/`, `validation/`, `test/` under the features URI) in memory is a float32 matrix in
`spec.feature_columns` order plus a label vector (`SplitArrays`; ml.data.source reads it whole, through
ml.data.stream's reader); training then shuffles with a seeded generator and slices contiguous batches: no per-row
Dataset/DataLoader, so the loader costs one gather per epoch.

For tuning, the driver reads the splits once and Tune hands them to every trial through `tune.with_parameters`,
which puts the numpy arrays into Ray's object store: trials on one node share them without copying. Reads take a
pyarrow filesystem (ml.clients.arrow_filesystem) and an S3 client for the spec. `split_arrays` is the one
conversion from Arrow to arrays, with the checks every read makes; ml.data.stream uses it for its blocks.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.features import LABEL_COLUMN, SPLITS, FeatureSpec
from ml.storage import NOT_FOUND_CODES, DataError, S3Uri, error_code, feature_spec_uri, read_json

if TYPE_CHECKING:
    import torch


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


def split_arrays(
    data: Any,
    name: str,
    uri: S3Uri | str,
    *,
    feature_columns: Sequence[str],
    task: str,
    num_outputs: int,
    classes: Sequence[str] | None = None,
) -> SplitArrays:
    """An Arrow table or record batch as arrays: X float32 C-order in `feature_columns` order, y int64 class indices
    (classification) or float32 values; DataError naming `uri` for missing columns, nulls, labels outside
    0..num_outputs-1 and non-finite values. The one conversion of every block that ml.data.stream reads (a whole
    split is read as its blocks)."""
    import pyarrow as pa

    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    check_columns(table.schema.names, feature_columns, uri, name)

    # Fill a preallocated C-order float32 matrix column by column: no intermediate float64 copy of the whole table.
    X = np.empty((table.num_rows, len(feature_columns)), dtype=np.float32)
    for index, column in enumerate(feature_columns):
        chunked = table.column(column)
        if chunked.null_count:
            raise DataError(f"{uri}: column {column!r} has {chunked.null_count} nulls")
        X[:, index] = chunked.to_numpy()
    label = table.column(LABEL_COLUMN)
    if label.null_count:
        raise DataError(f"{uri}: column {LABEL_COLUMN!r} has {label.null_count} nulls")
    raw_y = label.to_numpy()
    if task == "classification":
        y = raw_y.astype(np.int64)
        bad = (y < 0) | (y >= num_outputs)
        if bad.any():
            known = f" (classes {list(classes)})" if classes is not None else ""
            raise DataError(f"{uri}: {int(bad.sum())} labels outside 0..{num_outputs - 1}{known}")
    else:
        y = raw_y.astype(np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"{uri}: non-finite feature values in the {name} split")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{uri}: non-finite labels in the {name} split")
    return SplitArrays(name, X, y)


def check_columns(names: Collection[str], feature_columns: Sequence[str], uri: S3Uri | str, split: str) -> None:
    """DataError naming `uri` unless every feature column and the label are among `names` (a schema's)."""
    present = set(names)
    missing = [c for c in [*feature_columns, LABEL_COLUMN] if c not in present]
    if missing:
        raise DataError(f"{uri}: columns missing from the {split} split: {missing[:10]}")


def split_uri(features: S3Uri | str, split: str) -> S3Uri:
    """The folder of one split under the features URI; ValueError for a name that is not a split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    base = features if isinstance(features, S3Uri) else S3Uri.parse(features)
    return base.join(split)


def open_dataset(uri: S3Uri, split: str, filesystem: Any) -> Any:
    """The split's Parquet parts as a pyarrow dataset (Spark's `_SUCCESS` and other `_`/`.` files are ignored);
    DataError naming `uri` when the folder cannot be read or holds a file that is not Parquet."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        return ds.dataset(f"{uri.bucket}/{uri.key}", filesystem=filesystem, format="parquet")
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"{uri}: cannot read the {split} split: {error}") from error


def to_tensors(split: SplitArrays) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-copy tensors over the arrays (object-store arrays are read-only; we never write to X or y)."""
    import torch

    with warnings.catch_warnings():
        # torch warns about read-only arrays; slicing and gathers never write into them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        X = torch.from_numpy(split.X)
        y = torch.from_numpy(split.y)
    return X, y


def batch_count(rows: int, batch_size: int, drop_singleton: bool) -> int:
    """Batches of `batch_size` over `rows` rows: the trailing partial batch counts unless it is a single row that
    training drops (`drop_singleton`, and more than one row in all)."""
    full, rest = divmod(rows, batch_size)
    keep_rest = rest > 1 or (rest == 1 and (not drop_singleton or rows == 1))
    return full + (1 if keep_rest else 0)


def check_sharding(rows: int, rank: int, world_size: int) -> int:
    """Each worker's rows per epoch: all rows for one worker, else `rows // world_size` (the remainder sits the
    epoch out, so every worker runs the same number of steps); ValueError for a bad rank or too few rows."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    if world_size == 1:
        return rows
    if rows < world_size:
        raise ValueError(f"{rows} rows cannot give each of {world_size} workers a row")
    return rows // world_size


class TensorBatches:
    """Shuffled mini-batches by slicing tensors; the shuffle comes from a seeded torch.Generator.

    Each epoch draws one permutation, gathers X and y once, then yields contiguous views. A trailing batch of a single
    row is dropped in training (BatchNorm cannot normalise one row, and one row adds nothing but noise).

    Data-parallel workers pass `rank` and `world_size` and generators seeded alike: every rank draws the same
    permutation and takes its own contiguous `rows // world_size` positions of it, so the shards are disjoint.
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        self.rows_per_epoch = check_sharding(X.shape[0], rank, world_size)
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator or torch.Generator().manual_seed(0)
        self.drop_singleton = drop_singleton
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return batch_count(self.rows_per_epoch, self.batch_size, self.drop_singleton)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        n = self.rows_per_epoch
        if self.world_size > 1:
            # One permutation for all ranks (generators seeded alike), this rank's contiguous part of it.
            first, stop = self.rank * n, (self.rank + 1) * n
            if self.shuffle:
                index = torch.randperm(self.X.shape[0], generator=self.generator)[first:stop]
                X, y = self.X[index], self.y[index]
            else:
                X, y = self.X[first:stop], self.y[first:stop]
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            X, y = self.X[order], self.y[order]
        else:
            X, y = self.X, self.y
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            if stop - start == 1 and self.drop_singleton and n > 1:
                break
            yield X[start:stop], y[start:stop]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The next epoch's batches, as `StreamedBatches.epoch`; the number is ignored: the generator carries the
        shuffle's state (a checkpoint saves it)."""
        return iter(self)
