"""Feature splits from S3 into training batches, in memory or streamed.

- `ml.data.arrays`: a split as numpy (`SplitArrays`) and `TensorBatches`, which shuffles and slices tensors over it;
  what a search hands its trials through Ray's object store.
- `ml.data.stream`: a split described by its Parquet row groups (`ParquetSplit`, footers only, picklable), the one
  reader of splits, and `StreamedBatches`, which reads one data-parallel worker's shard block by block through a
  shuffle buffer, so memory is bounded by the block, buffer and batch sizes rather than by the split.
- `ml.data.source`: a split read whole (`read_split`, `load_training_data`) and what a search hands its trials,
  in memory or streamed by size (`training_data`).

Every block is converted by `split_arrays`, so every read makes the same checks and gives the same arrays.
"""

from __future__ import annotations

from ml.data.arrays import (
    SplitArrays,
    TensorBatches,
    TrainingData,
    load_feature_spec,
    split_arrays,
    to_tensors,
)
from ml.data.source import StreamingData, label_moments, load_training_data, read_split, training_data
from ml.data.stream import ParquetSplit, ParquetUnit, StreamedBatches

__all__ = [
    "ParquetSplit",
    "ParquetUnit",
    "SplitArrays",
    "StreamedBatches",
    "StreamingData",
    "TensorBatches",
    "TrainingData",
    "label_moments",
    "load_feature_spec",
    "load_training_data",
    "read_split",
    "split_arrays",
    "to_tensors",
    "training_data",
]
