"""ml.data.stream: splits described by their row groups, read block by block, and the shuffled batches of each
data-parallel worker's shard, over a local folder laid out like the lake (several parts, several row groups each)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import ml.data.stream
from ml.data import ParquetSplit, SplitArrays, StreamedBatches, read_split
from ml.features import FeatureSpec
from ml.storage import DataError, S3Uri
from tests.support.synthetic_features import LocalLake, make_arrays, make_spec

FEATURES = S3Uri("lake", "datasets/d/features/snap")
TRAIN_URI = r"s3://lake/datasets/d/features/snap/train: "
ROWS = 100  # in 3 parts of 33, 33 and 34 rows, row groups of 7: 5 + 5 + 5 units


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path)


def _write(
    lake: LocalLake, task: str = "classification", rows: int = ROWS, *, parts: int = 3, row_group_size: int = 7
) -> tuple[FeatureSpec, SplitArrays]:
    """A train split whose feature x0 is the row's number, so every batch row says which row it is."""
    spec = make_spec("d", "snap", task, 3 if task == "classification" else 1, rows={"train": rows})
    train = make_arrays(spec, {"train": rows})["train"]
    train.X[:, 0] = np.arange(rows)
    lake.write_features(spec, {"train": train}, FEATURES, parts=parts, row_group_size=row_group_size)
    return spec, train


def _open(lake: LocalLake, **write: Any) -> tuple[ParquetSplit, SplitArrays]:
    spec, train = _write(lake, **write)
    return ParquetSplit.open(FEATURES, "train", spec, lake.filesystem), train


def _ids(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    return [int(v) for xb, _ in batches for v in xb[:, 0]]


# -- the split's row groups


def test_open_reads_the_footers_and_ignores_the_success_marker(lake: LocalLake) -> None:
    split, _ = _open(lake)
    assert (split.name, split.uri, split.rows) == ("train", str(FEATURES.join("train")), ROWS)
    assert split.feature_columns == tuple(make_spec("d", "snap", "classification", 3).feature_columns)
    assert (split.task, split.num_outputs, split.classes) == ("classification", 3, ("class_a", "class_b", "class_c"))
    assert [unit.rows for unit in split.units] == [7, 7, 7, 7, 5] * 2 + [7, 7, 7, 7, 6]
    paths = sorted({unit.path for unit in split.units})
    assert len(paths) == 3 and all(p.startswith("lake/datasets/d/features/snap/train/part-") for p in paths)
    for path in paths:
        groups = [unit.row_group for unit in split.units if unit.path == path]
        assert groups == list(range(pq.read_metadata(path, filesystem=lake.filesystem).num_row_groups))
    assert split.array_bytes == ROWS * (7 * 4 + 8)  # float32 features, int64 class indices
    assert pickle.loads(pickle.dumps(split)) == split  # to trials and DDP workers, without a filesystem


def test_an_empty_split_opens_with_no_rows(lake: LocalLake) -> None:
    split, _ = _open(lake, rows=0, parts=1)
    assert (split.rows, split.units, split.array_bytes) == (0, (), 0)
    assert split.read(lake.filesystem).X.shape == (0, 7)
    batches = StreamedBatches(split, lake.filesystem, 4, seed=0)
    assert len(batches) == 0 and list(batches.epoch(0)) == []


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_blocks_and_read_give_what_read_split_gives(lake: LocalLake, task: str) -> None:
    split, _ = _open(lake, task=task)
    whole = read_split(
        FEATURES, "train", make_spec("d", "snap", task, 3 if task == "classification" else 1), lake.filesystem
    )
    blocks = list(split.blocks(lake.filesystem, block_rows=5))
    assert max(block.rows for block in blocks) == 5
    np.testing.assert_array_equal(np.concatenate([block.X for block in blocks]), whole.X)
    np.testing.assert_array_equal(np.concatenate([block.y for block in blocks]), whole.y)
    read = split.read(lake.filesystem, block_rows=3)
    assert read.name == "train" and read.X.flags["C_CONTIGUOUS"]
    assert (read.X.dtype, read.y.dtype) == (whole.X.dtype, whole.y.dtype)
    np.testing.assert_array_equal(read.X, whole.X)
    np.testing.assert_array_equal(read.y, whole.y)


def test_blocks_of_chosen_units(lake: LocalLake) -> None:
    split, train = _open(lake)
    chosen = [split.units[4], split.units[0]]  # 5 rows at 28..32 (the first part's last group), then rows 0..6
    blocks = list(split.blocks(lake.filesystem, units=chosen))
    assert np.concatenate([b.X[:, 0] for b in blocks]).tolist() == [*range(28, 33), *range(7)]
    np.testing.assert_array_equal(np.concatenate([b.y for b in blocks]), train.y[[*range(28, 33), *range(7)]])


# -- what the stream refuses: as read_split, naming the split's URI


def _put_train(lake: LocalLake, table: pa.Table, name: str = "part-00000.parquet") -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=2)
    lake.put(FEATURES.join("train", name), buffer.getvalue())


def _table(spec: FeatureSpec, **overrides: pa.Array) -> pa.Table:
    columns: dict[str, pa.Array] = {c: pa.array(np.zeros(4), pa.float32()) for c in spec.feature_columns}
    columns["label"] = pa.array([0] * 4, pa.int32())
    columns.update(overrides)
    return pa.table(columns)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"x0": pa.array([0.0, None, 1.0, 2.0], pa.float32())}, "column 'x0' has 1 nulls"),
        ({"label": pa.array([0, None, 1, 1], pa.int32())}, "column 'label' has 1 nulls"),
        ({"label": pa.array([0, 3, 1, -1], pa.int32())}, r"1 labels outside 0..2 \(classes \['class_a'"),
        ({"x2": pa.array([0.0, 1.0, np.inf, 2.0], pa.float32())}, "non-finite feature values in the train split"),
    ],
)
def test_bad_rows_are_refused_when_read(lake: LocalLake, change: dict[str, pa.Array], message: str) -> None:
    spec = make_spec("d", "snap", "classification", 3)
    _put_train(lake, _table(spec, **change))
    split = ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)  # footers only: nothing seen yet
    with pytest.raises(DataError, match=TRAIN_URI + message):
        split.read(lake.filesystem)
    with pytest.raises(DataError, match=TRAIN_URI + message):
        list(StreamedBatches(split, lake.filesystem, 2, seed=0).epoch(0))


def test_non_finite_regression_labels_are_refused(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "regression", 1)
    _put_train(lake, _table(spec, label=pa.array([1.0, 2.0, np.nan, 3.0], pa.float64())))
    with pytest.raises(DataError, match=TRAIN_URI + "non-finite labels in the train split"):
        ParquetSplit.open(FEATURES, "train", spec, lake.filesystem).read(lake.filesystem)


def test_missing_columns_are_refused_at_open_in_any_part(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3)
    _put_train(lake, _table(spec), "part-00000.parquet")
    _put_train(lake, _table(spec).drop_columns(["x1"]), "part-00001.parquet")
    with pytest.raises(DataError, match=TRAIN_URI + r"columns missing from the train split: \['x1'\]"):
        ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)


def test_unreadable_splits_name_the_split(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3)
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        ParquetSplit.open(FEATURES, "holdout", spec, lake.filesystem)
    with pytest.raises(DataError, match=TRAIN_URI + "cannot read the train split"):
        ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)  # no folder
    lake.put(FEATURES.join("train", "part-00000.parquet"), b"not parquet at all")
    with pytest.raises(DataError, match=TRAIN_URI + "cannot read the train split"):
        ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)


def test_a_part_rewritten_after_open_is_refused_not_misread(lake: LocalLake) -> None:
    spec = make_spec("d", "snap", "classification", 3)
    _put_train(lake, _table(spec))
    split = ParquetSplit.open(FEATURES, "train", spec, lake.filesystem)
    _put_train(lake, _table(spec).slice(0, 3))  # row group 1 now has 1 row, not 2
    with pytest.raises(DataError, match=TRAIN_URI + r".*row group 1 gave 1 of the rows \[0, 2\)"):
        split.read(lake.filesystem)


# -- streamed batches


def _epoch(split: ParquetSplit, lake: LocalLake, epoch: int = 0, **options: Any) -> list[tuple[Any, Any]]:
    options = {"seed": 5, "shuffle_rows": 20, "block_rows": 6, **options}
    return list(StreamedBatches(split, lake.filesystem, options.pop("batch_size", 8), **options).epoch(epoch))


def test_one_worker_sees_every_row_once_an_epoch_with_its_label(lake: LocalLake) -> None:
    split, train = _open(lake)
    streamed = StreamedBatches(split, lake.filesystem, 8, seed=5, shuffle_rows=20, block_rows=6)
    assert streamed.rows_per_epoch == ROWS and len(streamed) == 13  # 12 of 8 rows, then 4
    for epoch in range(2):
        batches = list(streamed.epoch(epoch))
        assert [xb.shape[0] for xb, _ in batches] == [8] * 12 + [4]
        assert sorted(_ids(batches)) == list(range(ROWS))
        for xb, yb in batches:
            assert xb.dtype == torch.float32 and yb.dtype == torch.int64
            assert torch.equal(yb, torch.from_numpy(train.y[xb[:, 0].long().numpy()]))  # rows stay whole
        assert _ids(batches) != sorted(_ids(batches))  # shuffled


def test_a_trailing_single_row_is_dropped_as_tensor_batches_drops_it(lake: LocalLake) -> None:
    split, _ = _open(lake, rows=97)
    assert len(StreamedBatches(split, lake.filesystem, 8, seed=0)) == 12
    batches = _epoch(split, lake)
    assert len(batches) == 12 and len(set(_ids(batches))) == 96
    kept = _epoch(split, lake, drop_singleton=False)
    assert [xb.shape[0] for xb, _ in kept][-1] == 1 and sorted(_ids(kept)) == list(range(97))


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("rows,batch_size", [(ROWS, 8), (ROWS, 5), (97, 8)])
def test_workers_cover_disjoint_shards_with_as_many_batches(
    lake: LocalLake, world_size: int, rows: int, batch_size: int
) -> None:
    split, _ = _open(lake, rows=rows)
    for epoch in range(2):
        seen: list[list[int]] = []
        for rank in range(world_size):
            streamed = StreamedBatches(split, lake.filesystem, batch_size, seed=5, rank=rank, world_size=world_size)
            assert streamed.rows_per_epoch == rows // world_size
            assert len(streamed) == len(
                StreamedBatches(split, lake.filesystem, batch_size, seed=5, rank=0, world_size=world_size)
            )
            batches = _epoch(
                split, lake, epoch, batch_size=batch_size, rank=rank, world_size=world_size, drop_singleton=False
            )
            assert len(batches) == len(streamed) + (1 if streamed.rows_per_epoch % batch_size == 1 else 0)
            assert len(_ids(batches)) == streamed.rows_per_epoch
            trained = _epoch(split, lake, epoch, batch_size=batch_size, rank=rank, world_size=world_size)
            assert len(trained) == len(streamed)
            seen.append(_ids(batches))
        every = [row for ids in seen for row in ids]
        assert len(every) == len(set(every)) == world_size * (rows // world_size)  # disjoint


def test_epochs_are_deterministic_in_seed_epoch_and_rank(lake: LocalLake) -> None:
    split, _ = _open(lake)

    def ids(epoch: int, seed: int = 5, rank: int = 0) -> list[int]:
        return _ids(_epoch(split, lake, epoch, seed=seed, rank=rank, world_size=2))

    assert ids(0) == ids(0) and ids(1) == ids(1)
    assert ids(0) != ids(1)
    assert ids(0) != ids(0, seed=6)
    assert set(ids(0, rank=0)).isdisjoint(ids(0, rank=1))
    assert set(ids(0)) != set(ids(1))  # the shards themselves move between epochs, not only their order


def test_memory_is_bounded_by_block_buffer_and_batch(lake: LocalLake, monkeypatch: pytest.MonkeyPatch) -> None:
    split, _ = _open(lake, rows=400, parts=2, row_group_size=50)
    converted: list[int] = []
    buffered: list[int] = []
    convert, shuffle = ml.data.stream.split_arrays, StreamedBatches._shuffled

    def spy_convert(data: Any, *args: Any, **kwargs: Any) -> SplitArrays:
        converted.append(data.num_rows)
        return convert(data, *args, **kwargs)

    def spy_shuffle(self: StreamedBatches, pending: list[SplitArrays], *args: Any, **kwargs: Any) -> Any:
        buffered.append(sum(block.rows for block in pending))
        return shuffle(self, pending, *args, **kwargs)

    monkeypatch.setattr(ml.data.stream, "split_arrays", spy_convert)
    monkeypatch.setattr(StreamedBatches, "_shuffled", spy_shuffle)
    for rank in range(3):
        streamed = StreamedBatches(
            split, lake.filesystem, 16, seed=1, rank=rank, world_size=3, shuffle_rows=40, block_rows=12
        )
        batches = list(streamed.epoch(0))
        assert len(batches) == len(streamed)
    assert max(converted) <= 12
    assert sum(converted) == 3 * (400 // 3)  # each rank converts its own rows only
    assert max(buffered) <= 40 + 12 + 16 and len(buffered) > 3  # several buffers per rank, none of the whole shard


def test_batches_refuse_bad_arguments(lake: LocalLake) -> None:
    split, _ = _open(lake, rows=5, parts=1)
    for options, message in [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"shuffle_rows": 0}, "shuffle_rows must be >= 1"),
        ({"block_rows": -1}, "block_rows must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"rank": 2, "world_size": 2}, r"rank must be in 0..1, got 2"),
        ({"rank": -1, "world_size": 2}, r"rank must be in 0..1, got -1"),
        ({"world_size": 0}, "world_size must be >= 1"),
        ({"rank": 0, "world_size": 6}, "5 rows cannot give each of 6 workers a row"),
    ]:
        arguments: dict[str, Any] = {"batch_size": 2, "seed": 0, **options}
        with pytest.raises(ValueError, match=message):
            StreamedBatches(split, lake.filesystem, arguments.pop("batch_size"), **arguments)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        StreamedBatches(split, lake.filesystem, 2, seed=0).epoch(-1)
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        split.blocks(lake.filesystem, block_rows=0)


def test_prefetched_items_arrive_in_order_and_an_error_reaches_the_consumer() -> None:
    from ml.data.stream import prefetched

    assert list(prefetched(iter(range(50)), 2)) == list(range(50))

    def failing() -> Any:
        yield 1
        raise DataError("part-3.parquet: truncated")

    got = []
    with pytest.raises(DataError, match="truncated"):
        for item in prefetched(failing(), 2):
            got.append(item)
    assert got == [1]


def test_the_producer_never_runs_more_than_its_depth_ahead_of_the_consumer() -> None:
    from ml.data.stream import prefetched

    produced: list[int] = []

    def endless() -> Any:
        for number in range(10**9):
            produced.append(number)
            yield number

    items = prefetched(endless(), 2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # the consumer goes away
    assert len(produced) <= 3 + 2 + 1  # never more than `depth` ahead (plus the one being offered)
