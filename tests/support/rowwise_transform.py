"""The row-wise FeatureSpec transform as it was before the columnar one (issue 17): the reference oracle of the
columnar transform's tests and the baseline of bench.b8_predict_path. Kept verbatim (one row, one column at a time,
the per-value rules `to_float` and `normalise_category` from ml.features), so that any difference in output or in
errors is the columnar code's."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml.features import OTHER, FeatureSpec, normalise_category
from ml.features.rules import to_float


def rowwise_transform(spec: FeatureSpec, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Raw rows (by column name) -> float32 matrix in `feature_columns` order, one row at a time."""
    matrix = np.zeros((len(records), len(spec.feature_columns)), dtype=np.float32)
    for row_index, record in enumerate(records):
        matrix[row_index] = _transform_one(spec, record, row_index)
    return matrix


def _transform_one(spec: FeatureSpec, record: Mapping[str, Any], row_index: int) -> list[float]:
    values: list[float] = []
    for feature in spec.numeric:
        x = to_float(record.get(feature.name), feature.name, row_index)
        if x is None or not math.isfinite(x):
            x = feature.fill
        values.append((x - feature.mean) / (feature.std or 1.0))
    for cat in spec.categorical:
        raw = record.get(cat.name)
        value = None if raw is None else normalise_category(raw)
        hot = value if value in cat.categories else OTHER
        values.extend(1.0 if hot == option else 0.0 for option in [*cat.categories, OTHER])
    return values
