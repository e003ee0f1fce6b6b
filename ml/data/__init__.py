"""Feature splits from S3 into training batches, in memory or streamed.

- `ml.data.arrays`: a split read whole into numpy (`read_split`, `load_training_data`) and `TensorBatches`, which
  shuffles and slices tensors over it; what a search hands its trials through Ray's object store.
- `ml.data.stream`: a split described by its Parquet row groups (`ParquetSplit`, footers only, picklable) and
  `StreamedBatches`, which reads one data-parallel worker's shard block by block through a shuffle buffer, so memory
  is bounded by the block, buffer and batch sizes rather than by the split.

Both convert Arrow data with `split_arrays`, so they make the same checks and give the same arrays.
"""

from __future__ import annotations

from ml.data.arrays import (
    SplitArrays,
    TensorBatches,
    TrainingData,
    load_feature_spec,
    load_training_data,
    read_split,
    split_arrays,
    to_tensors,
)
from ml.data.source import StreamingData, label_moments, training_data
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
