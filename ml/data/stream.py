"""Feature splits streamed from S3 block by block: each data-parallel worker reads its own shard in bounded memory.

`ParquetSplit.open` reads only a split's Parquet footers: its row groups ("units") and their row counts. It holds no
filesystem, so it pickles small to trials and DDP workers, and each of them reads with a filesystem of its own.

`StreamedBatches.epoch(e)` lays the units end to end in an order seeded by (seed, e), the same on every rank; rank r
takes the contiguous rows [r*m, (r+1)*m) of them (m = rows // world_size), reads only the units that overlap them,
`block_rows` rows at a time, and mixes rows through a shuffle buffer of `shuffle_rows` rows seeded by (seed, e, r).
A background thread reads and decodes up to `PREFETCH_BLOCKS` blocks ahead while the current rows train. A worker
holds about (1 + PREFETCH_BLOCKS) * block_rows + shuffle_rows + batch_size rows (the buffer twice while it is shuffled,
plus the compressed column chunks of the row group pyarrow is decoding), however large the split. Every rank yields
the same number of batches: DDP needs that (a rank with one batch more waits forever in its all-reduce).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ml.data.arrays import (
    SplitArrays,
    batch_count,
    check_columns,
    check_sharding,
    open_dataset,
    split_arrays,
    split_uri,
)
from ml.features import LABEL_COLUMN, FeatureSpec
from ml.storage import DataError, S3Uri

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_ROWS = 65536
SHUFFLE_ROWS = 65536
# Blocks read and decoded ahead by a background thread while the current ones train (pyarrow decodes without the GIL).
PREFETCH_BLOCKS = 2


@dataclass(frozen=True)
class ParquetUnit:
    """One row group of one Parquet file: what an epoch's order permutes and what shards are cut from."""

    path: str  # "bucket/key...", as pyarrow's S3 filesystem takes it
    row_group: int
    rows: int


@dataclass(frozen=True)
class _Piece:
    """Rows [start, stop) of one unit: the part of it that a worker's shard covers."""

    unit: ParquetUnit
    start: int
    stop: int


@dataclass(frozen=True)
class ParquetSplit:
    """A split described by its row groups (footers only): small and picklable, no filesystem inside; every
    reader (a trial, a DDP worker) opens it with a filesystem of its own."""

    name: str
    uri: str
    units: tuple[ParquetUnit, ...]
    feature_columns: tuple[str, ...]
    task: str
    num_outputs: int
    classes: tuple[str, ...] | None = None  # only to name the classes in a bad-label error

    @property
    def rows(self) -> int:
        return sum(unit.rows for unit in self.units)

    @property
    def array_bytes(self) -> int:
        """What `read()` would hold: float32 features plus int64 class indices or float32 values."""
        label_bytes = 8 if self.task == "classification" else 4
        return self.rows * (4 * len(self.feature_columns) + label_bytes)

    @classmethod
    def open(cls, features: S3Uri | str, split: str, spec: FeatureSpec, filesystem: Any) -> ParquetSplit:
        """List the split's Parquet parts (`_`/`.` files such as Spark's `_SUCCESS` are ignored) and read each
        footer; DataError naming the split's URI when it cannot be read or lacks a column. An empty split is
        allowed (rows == 0)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        uri = split_uri(features, split)
        dataset = open_dataset(uri, split, filesystem)
        check_columns(dataset.schema.names, spec.feature_columns, uri, split)
        units: list[ParquetUnit] = []
        for path in sorted(dataset.files):
            try:
                metadata = pq.read_metadata(path, filesystem=filesystem)
            except (OSError, pa.ArrowInvalid) as error:
                raise DataError(f"{uri}: cannot read the {split} split: {error}") from error
            check_columns(metadata.schema.to_arrow_schema().names, spec.feature_columns, uri, split)
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                if rows:
                    units.append(ParquetUnit(path, group, rows))
        classes = tuple(spec.classes) if spec.classes is not None else None
        return cls(split, str(uri), tuple(units), tuple(spec.feature_columns), spec.task, spec.num_outputs, classes)

    def blocks(
        self, filesystem: Any, *, units: Sequence[ParquetUnit] | None = None, block_rows: int = BLOCK_ROWS
    ) -> Iterator[SplitArrays]:
        """The rows of `units` (default: all, in order) as arrays of at most `block_rows` rows, each converted and
        checked by `split_arrays`."""
        _check_positive(block_rows=block_rows)
        chosen = self.units if units is None else units
        return self._read(filesystem, [_Piece(unit, 0, unit.rows) for unit in chosen], block_rows)

    def labels(self, filesystem: Any, *, block_rows: int = BLOCK_ROWS) -> Iterator[np.ndarray]:
        """The label column block by block, checked as `split_arrays` checks it; the features are not read."""
        labels_only = dataclasses.replace(self, feature_columns=())
        for block in labels_only.blocks(filesystem, block_rows=block_rows):
            yield block.y

    def read(self, filesystem: Any, *, block_rows: int = BLOCK_ROWS) -> SplitArrays:
        """The whole split, filled block by block into preallocated arrays (what read_split gives)."""
        X = np.empty((self.rows, len(self.feature_columns)), dtype=np.float32)
        y = np.empty(self.rows, dtype=np.int64 if self.task == "classification" else np.float32)
        at = 0
        for block in self.blocks(filesystem, block_rows=block_rows):
            X[at : at + block.rows] = block.X
            y[at : at + block.rows] = block.y
            at += block.rows
        return SplitArrays(self.name, X, y)

    def _read(self, filesystem: Any, pieces: Sequence[_Piece], block_rows: int) -> Iterator[SplitArrays]:
        """The pieces' rows in order, opening each file once for a run of pieces in it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path, run in itertools.groupby(pieces, key=lambda piece: piece.unit.path):
            try:
                parquet = pq.ParquetFile(path, filesystem=filesystem)
            except (OSError, pa.ArrowInvalid) as error:
                raise DataError(f"{self.uri}: cannot read {path} of the {self.name} split: {error}") from error
            with parquet:
                for piece in run:
                    yield from self._read_piece(parquet, piece, block_rows)

    def _read_piece(self, parquet: Any, piece: _Piece, block_rows: int) -> Iterator[SplitArrays]:
        unit = piece.unit
        columns = [*self.feature_columns, LABEL_COLUMN]
        position = delivered = 0
        for batch in parquet.iter_batches(batch_size=block_rows, row_groups=[unit.row_group], columns=columns):
            begin, position = position, position + batch.num_rows
            if position <= piece.start:
                continue  # before the shard's first row: decoded, never converted
            first, stop = max(piece.start, begin), min(piece.stop, position)
            delivered += stop - first
            yield split_arrays(
                batch.slice(first - begin, stop - first),
                self.name,
                self.uri,
                feature_columns=self.feature_columns,
                task=self.task,
                num_outputs=self.num_outputs,
                classes=self.classes,
            )
            if position >= piece.stop:
                break
        if delivered != piece.stop - piece.start:
            # The footers promised more rows: every rank must yield the same number of batches, so stop loudly.
            raise DataError(
                f"{self.uri}: {unit.path} row group {unit.row_group} gave {delivered} of the rows "
                f"[{piece.start}, {piece.stop}) its footer promised ({unit.rows} rows): was the split rewritten?"
            )


class StreamedBatches:
    """Shuffled mini-batches of one worker's shard, read block by block. Deterministic in (seed, epoch, rank).

    Every rank yields exactly `len(self)` batches an epoch; a trailing batch of a single row is dropped in training,
    as TensorBatches drops it.
    """

    def __init__(
        self,
        split: ParquetSplit,
        filesystem: Any,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_rows: int = SHUFFLE_ROWS,
        block_rows: int = BLOCK_ROWS,
        drop_singleton: bool = True,
    ) -> None:
        _check_positive(batch_size=batch_size, shuffle_rows=shuffle_rows, block_rows=block_rows)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._rows_per_epoch = check_sharding(split.rows, rank, world_size)
        self.split = split
        self.filesystem = filesystem
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_rows, self.block_rows = shuffle_rows, block_rows
        self.drop_singleton = drop_singleton

    @property
    def rows_per_epoch(self) -> int:
        """This worker's rows an epoch: `split.rows // world_size` with several workers, else all rows."""
        return self._rows_per_epoch

    def __len__(self) -> int:
        return batch_count(self._rows_per_epoch, self.batch_size, self.drop_singleton)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch `epoch` (>= 0) for this rank."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return self._batches(epoch)

    def _pieces(self, epoch: int) -> list[_Piece]:
        """This rank's rows of the epoch: the units in the epoch's order (the same on every rank), end to end,
        cut to positions [rank*m, (rank+1)*m)."""
        units = self.split.units
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(units))
        first = self.rank * self._rows_per_epoch
        stop = first + self._rows_per_epoch
        pieces: list[_Piece] = []
        at = 0
        for index in order:
            unit = units[index]
            begin, end = max(first, at), min(stop, at + unit.rows)
            if begin < end:
                pieces.append(_Piece(unit, begin - at, end - at))
            at += unit.rows
            if at >= stop:
                break
        return pieces

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A separate stream per rank (the trailing 1 keeps it apart from the units' order, [seed, epoch, 0]).
        rng = np.random.default_rng([self.seed, epoch, 1, self.rank])
        pending: list[SplitArrays] = []
        held = 0
        blocks = self.split._read(self.filesystem, self._pieces(epoch), self.block_rows)
        for block in prefetched(blocks, PREFETCH_BLOCKS):
            pending.append(block)
            held += block.rows
            if held >= self.shuffle_rows:
                carry = yield from self._shuffled(pending, rng, last=False)
                pending, held = [carry], carry.rows
        if pending:
            yield from self._shuffled(pending, rng, last=True)

    def _shuffled(
        self, pending: list[SplitArrays], rng: np.random.Generator, *, last: bool
    ) -> Generator[tuple[torch.Tensor, torch.Tensor], None, SplitArrays]:
        """Shuffle the buffer and yield its full batches; return the rest to carry into the next buffer, or, for
        the epoch's last buffer, yield it too unless it is a single row that training drops."""
        import torch

        X = np.concatenate([block.X for block in pending])
        y = np.concatenate([block.y for block in pending])
        order = rng.permutation(X.shape[0])
        X, y = X[order], y[order]
        full = X.shape[0] - X.shape[0] % self.batch_size
        for start in range(0, full, self.batch_size):
            yield (
                torch.from_numpy(X[start : start + self.batch_size]),
                torch.from_numpy(y[start : start + self.batch_size]),
            )
        # The epoch's trailing partial batch, where `len` counts it (not a single row that training drops).
        keeps_rest = len(self) > self._rows_per_epoch // self.batch_size
        if last and full < X.shape[0] and keeps_rest:
            yield torch.from_numpy(X[full:]), torch.from_numpy(y[full:])
        # A copy, so that the carried rows do not keep this whole buffer alive.
        return SplitArrays(self.split.name, X[full:].copy(), y[full:].copy())


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """The items of `items`, produced by a background thread at most `depth` ahead of the consumer, in order; an
    error in the producer is raised in the consumer. Closing the consumer early stops the producer at its next item."""
    import queue
    import threading

    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.5)  # wakes up to see `stop` when the consumer has gone
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            offer(_Failed(error))
            return
        offer(_END)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
