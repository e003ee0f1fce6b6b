"""ml.data.arrays: the feature spec read from a features folder (moto's S3), the Arrow conversion, tensors over
read-only arrays, seeded batches and their shards. (Splits read whole: test_source.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from ml.data import (
    SplitArrays,
    TensorBatches,
    load_feature_spec,
    split_arrays,
    to_tensors,
)
from ml.storage import DataError, S3Uri
from tests.support.synthetic_features import LocalLake, in_memory_s3, make_arrays, make_spec

FEATURES = S3Uri("lake", "datasets/d/features/snap")
ROWS = {"train": 40, "validation": 20, "test": 10}


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path)


def _write(lake: LocalLake, task: str = "classification", classes: int = 3, *, client: Any = None) -> Any:
    spec = make_spec("d", "snap", task, classes, rows=ROWS)
    splits = make_arrays(spec, ROWS)
    lake.write_features(spec, splits, FEATURES, client=client)
    return spec, splits


# -- the feature spec


@pytest.fixture
def s3() -> Iterator[Any]:
    with in_memory_s3("lake") as client:
        yield client


def test_the_feature_spec_is_read_beside_the_splits(lake: LocalLake, s3: Any) -> None:
    spec, _ = _write(lake, client=s3)
    assert load_feature_spec(FEATURES, s3) == spec
    assert load_feature_spec(str(FEATURES), s3) == spec


def test_a_folder_without_a_spec_is_unfinished_preprocessing(s3: Any) -> None:
    with pytest.raises(DataError, match=r"s3://lake/datasets/d/features/snap/feature_spec.json: no feature spec"):
        load_feature_spec(FEATURES, s3)


def test_other_s3_errors_are_not_hidden(s3: Any) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="NoSuchBucket"):
        load_feature_spec(S3Uri("no-such-bucket", "features"), s3)


# -- the Arrow conversion


def test_a_record_batch_converts_as_its_table_does() -> None:
    spec = make_spec("d", "snap", "classification", 3, rows=ROWS)
    columns: dict[str, Any] = {c: pa.array(np.zeros(3), pa.float32()) for c in spec.feature_columns}
    table = pa.table({**columns, "x1": pa.array([1.5, 2.5, 3.5], pa.float32()), "label": pa.array([0, 1, 2])})
    args: dict[str, Any] = {"feature_columns": spec.feature_columns, "task": spec.task, "num_outputs": 3}
    whole = split_arrays(table, "train", FEATURES, **args)
    batch = split_arrays(table.to_batches()[0], "train", FEATURES, **args)
    np.testing.assert_array_equal(whole.X, batch.X)
    np.testing.assert_array_equal(whole.y, batch.y)
    assert whole.X[:, 1].tolist() == [1.5, 2.5, 3.5] and whole.y.dtype == np.int64


# -- tensors and batches


def test_batches_cover_every_row_once_per_epoch_and_are_seeded() -> None:
    X = torch.arange(23, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(23)
    batches = TensorBatches(X, y, batch_size=5, generator=torch.Generator().manual_seed(3))
    first = [b for b in batches]
    assert len(first) == len(batches) == 5
    rows = torch.cat([xb[:, 0] for xb, _ in first]).long()
    assert sorted(rows.tolist()) == list(range(23))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in first)  # X and y stay aligned
    second = torch.cat([xb[:, 0] for xb, _ in batches])
    assert not torch.equal(rows.float(), second)  # a new permutation each epoch
    again = TensorBatches(X, y, batch_size=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([xb for xb, _ in again]), torch.cat([xb for xb, _ in first]))


def test_a_trailing_single_row_is_dropped() -> None:
    batches = TensorBatches(torch.zeros(11, 2), torch.zeros(11), batch_size=5, shuffle=False)
    assert [xb.shape[0] for xb, _ in batches] == [5, 5] and len(batches) == 2
    keep = TensorBatches(torch.zeros(11, 2), torch.zeros(11), batch_size=5, shuffle=False, drop_singleton=False)
    assert [xb.shape[0] for xb, _ in keep] == [5, 5, 1] and len(keep) == 3


def test_a_single_row_split_still_gives_one_batch() -> None:
    batches = TensorBatches(torch.zeros(1, 2), torch.zeros(1), batch_size=5)
    assert [xb.shape[0] for xb, _ in batches] == [1] and len(batches) == 1


def test_batches_refuse_bad_shapes() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TensorBatches(torch.zeros(3, 2), torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="X has 3 rows but y has 2"):
        TensorBatches(torch.zeros(3, 2), torch.zeros(2), batch_size=2)


def test_tensors_share_memory_with_read_only_arrays() -> None:
    X = np.ones((4, 3), dtype=np.float32)
    X.setflags(write=False)  # as arrays from Ray's object store are
    tensor, _ = to_tensors(SplitArrays("train", X, np.zeros(4, dtype=np.int64)))
    assert tensor.data_ptr() == X.ctypes.data


def test_one_worker_is_the_default_and_an_epoch_is_an_iteration() -> None:
    X, y = torch.arange(23, dtype=torch.float32).unsqueeze(1), torch.arange(23)
    default = TensorBatches(X, y, batch_size=5, generator=torch.Generator().manual_seed(3))
    explicit = TensorBatches(X, y, 5, generator=torch.Generator().manual_seed(3), rank=0, world_size=1)
    assert explicit.rows_per_epoch == 23 and len(explicit) == len(default)
    for epoch in range(2):
        assert torch.equal(torch.cat([xb for xb, _ in default]), torch.cat([xb for xb, _ in explicit.epoch(epoch)]))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("rows,world_size", [(23, 2), (23, 3), (31, 3)])
def test_workers_take_disjoint_shards_of_one_permutation(rows: int, world_size: int, shuffle: bool) -> None:
    X, y = torch.arange(rows, dtype=torch.float32).unsqueeze(1), torch.arange(rows)
    shards = [
        TensorBatches(
            X, y, 4, shuffle=shuffle, generator=torch.Generator().manual_seed(7), rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    assert {len(shard) for shard in shards} == {len(shards[0])}
    for epoch in range(2):
        seen = []
        for shard in shards:
            batches = list(shard.epoch(epoch))
            assert len(batches) == len(shard)
            assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)
            ids = torch.cat([yb for _, yb in batches]).tolist()
            assert len(ids) == shard.rows_per_epoch == rows // world_size  # 4 does not leave a single row here
            seen.append(set(ids))
        assert sum(len(ids) for ids in seen) == len(set().union(*seen))  # disjoint


def test_a_shard_needs_a_valid_rank_and_a_row_per_worker() -> None:
    X, y = torch.zeros(3, 2), torch.zeros(3)
    with pytest.raises(ValueError, match=r"rank must be in 0..1, got 2"):
        TensorBatches(X, y, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        TensorBatches(X, y, 2, world_size=0)
    with pytest.raises(ValueError, match="3 rows cannot give each of 4 workers a row"):
        TensorBatches(X, y, 2, rank=1, world_size=4)
