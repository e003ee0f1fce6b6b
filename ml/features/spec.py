"""The feature spec's dataclasses: what Spark fitted (numeric statistics, kept categories) and the columns it makes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ml.features.columnar import Plan, standardise, transform, transform_columns
from ml.features.rules import OTHER, SPEC_VERSION


@dataclass(frozen=True)
class NumericFeature:
    name: str
    fill: float  # the training mean, used for missing and non-finite values
    mean: float
    std: float


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    categories: list[str]  # the kept training categories (most frequent first, capped)

    def columns(self) -> list[str]:
        return [f"{self.name}={value}" for value in [*self.categories, OTHER]]


@dataclass(frozen=True)
class FeatureSpec:
    dataset: str
    snapshot_id: str
    task: str  # "classification" or "regression"
    target: str
    numeric: list[NumericFeature]
    categorical: list[CategoricalFeature]
    classes: list[str] | None = None  # classification: label i is classes[i] (the target's values as strings)
    rows: dict[str, int] = field(default_factory=dict)  # rows kept per split
    dropped: dict[str, int] = field(default_factory=dict)  # rows removed, by reason
    version: int = SPEC_VERSION

    @property
    def feature_columns(self) -> list[str]:
        """The model's input columns, in order (the Parquet splits hold these plus `label`)."""
        return [f.name for f in self.numeric] + [c for f in self.categorical for c in f.columns()]

    @property
    def input_columns(self) -> list[str]:
        """The raw columns a request row must carry."""
        return [f.name for f in self.numeric] + [f.name for f in self.categorical]

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" and self.classes else 1

    def to_json(self) -> str:
        data = asdict(self)
        data["feature_columns"] = self.feature_columns
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"feature spec version {data.get('version')!r} is not {SPEC_VERSION}")
        return cls(
            dataset=data["dataset"],
            snapshot_id=data["snapshot_id"],
            task=data["task"],
            target=data["target"],
            numeric=[NumericFeature(**f) for f in data["numeric"]],
            categorical=[CategoricalFeature(**f) for f in data["categorical"]],
            classes=data.get("classes"),
            rows=dict(data.get("rows", {})),
            dropped=dict(data.get("dropped", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))

    def transform(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Raw rows (by column name) -> float32 matrix in `feature_columns` order. Raises ValueError naming the row
        and column of a value that is neither missing nor a number for a numeric column (the first one in row order,
        then column order, as a row-by-row transform meets it).

        Column by column (numpy, pyarrow for strings, no Python per value in the common cases), byte for byte what
        the row-by-row rule gives: `rules.to_float` and standardisation per numeric value, `normalise_category` and
        one-hot per categorical value (tests/support/rowwise_transform.py keeps that rule as the tests' oracle)."""
        return transform(self._plan, records)

    def transform_columns(self, numeric: np.ndarray, categorical: Sequence[Sequence[Any]]) -> np.ndarray:
        """`transform` of rows given as columns (an Arrow request's): `numeric` a float64 matrix, one column per
        numeric feature in spec order (NaN: missing), `categorical` each categorical feature's raw values in spec
        order. The same arithmetic and one-hot as `transform` of the same rows."""
        return transform_columns(self._plan, numeric, categorical)

    def standardised(self, numeric: np.ndarray) -> np.ndarray:
        """The numeric features' values as `transform` standardises them, (value - mean) / std in float64, before
        the cast to float32 (beyond float64: inf; NaN stays NaN): `numeric` one column per numeric feature in spec
        order. What the service's checks compare with float32's range."""
        with np.errstate(all="ignore"):
            return standardise(self._plan, numeric)

    @cached_property
    def _plan(self) -> Plan:
        """What every transform reuses (a spec is not changed once used: it is frozen, its lists by convention)."""
        return Plan(self)

    def decode_labels(self, indices: Iterable[int]) -> list[str]:
        if not self.classes:
            raise ValueError("decode_labels is for classification specs")
        return [self.classes[i] for i in indices]
