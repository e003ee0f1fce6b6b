"""The feature spec: everything needed to turn a raw row into the model's input exactly as Spark did in training.

Spark's preprocessing job fits it on the training split and writes it as `feature_spec.json` beside the Parquet
splits; training reads its column lists; serving applies `FeatureSpec.transform` to raw request rows. The transform:
  numeric column x   -> (x_or_fill - mean) / std     (std 0 -> 1; missing and non-finite x -> fill, the training mean)
  categorical col c  -> one-hot over the training categories, plus `c=__other__` for unseen, rare or missing values
Categorical values are keyed by `normalise_category`, which the Spark job mirrors with built-in expressions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OTHER = "__other__"
LABEL_COLUMN = "label"
SPLITS = ("train", "validation", "test")  # the folders of a features URI, each Parquet with feature columns + label
SPEC_VERSION = 1

# A plain decimal number (after trimming whitespace): what counts as a number in a numeric column, in the ingest check
# and in the Spark job alike (Spark's own cast also takes "3D", "1f" or hex, which would silently turn into numbers).
# Whitespace is spelled out as ASCII: `\s` means Unicode spaces to Python, ASCII without \v to pyarrow's RE2 and ASCII
# with \v to Java, so " 5" with a no-break space was a number when served but missing in Spark.
_SPACE = r"[ \t\n\r\f\x0B]*"
NUMBER_PATTERN = rf"^{_SPACE}[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?{_SPACE}$"
# Spellings of non-finite numbers: a numeric column's missing values, not bad values.
NON_FINITE_WORDS = frozenset(f"{sign}{word}" for sign in ("", "+", "-") for word in ("inf", "infinity", "nan"))
# An integral decimal written with a fraction ("3.0", "3."): the same category as "3".
INTEGRAL_DECIMAL_PATTERN = r"^([+-]?[0-9]+)\.0*$"
# Boolean spellings (those pyarrow reads as booleans): one category each, as Spark writes a boolean as a string.
BOOLEAN_SPELLINGS = {"True": "true", "TRUE": "true", "False": "false", "FALSE": "false"}


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
        and column of a value that is neither missing nor a number for a numeric column."""
        matrix = np.zeros((len(records), len(self.feature_columns)), dtype=np.float32)
        for row_index, record in enumerate(records):
            matrix[row_index] = self._transform_one(record, row_index)
        return matrix

    def _transform_one(self, record: Mapping[str, Any], row_index: int) -> list[float]:
        values: list[float] = []
        for feature in self.numeric:
            x = _to_float(record.get(feature.name), feature.name, row_index)
            if x is None or not math.isfinite(x):
                x = feature.fill
            values.append((x - feature.mean) / (feature.std or 1.0))
        for cat in self.categorical:
            raw = record.get(cat.name)
            value = None if raw is None else normalise_category(raw)
            hot = value if value in cat.categories else OTHER
            values.extend(1.0 if hot == option else 0.0 for option in [*cat.categories, OTHER])
        return values

    def decode_labels(self, indices: Iterable[int]) -> list[str]:
        if not self.classes:
            raise ValueError("decode_labels is for classification specs")
        return [self.classes[i] for i in indices]


def normalise_category(value: Any) -> str:
    """How a categorical value is keyed, in Spark and in Python alike: its string form with spaces trimmed (Spark's
    `trim` removes spaces only), booleans (and `True`, `FALSE`...) as `true`/`false`, and an integral decimal such as
    `3.0` as `3`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    text = str(value).strip(" ")
    return BOOLEAN_SPELLINGS.get(text) or re.sub(INTEGRAL_DECIMAL_PATTERN, r"\1", text)


_NUMBER = re.compile(NUMBER_PATTERN)


def parse_number(text: str) -> float | None:
    """A plain decimal number, or a spelling of inf/nan (a missing value); None for anything else. The rule the
    ingest check and the Spark job apply too (Python's float() also takes "1_000" and other digits)."""
    if not (_NUMBER.match(text) or text.strip().lower() in NON_FINITE_WORDS):
        return None
    return float(text)


def _to_float(value: Any, column: str, row_index: int) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise ValueError(f"row {row_index}, column {column!r}: expected a number, got a boolean")
    parsed = parse_number(value) if isinstance(value, str) else value
    try:
        if parsed is None:
            raise ValueError(value)
        return float(parsed)
    except (TypeError, ValueError):
        raise ValueError(f"row {row_index}, column {column!r}: expected a number, got {value!r}") from None
