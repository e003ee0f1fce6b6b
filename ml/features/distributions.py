"""Training distributions: what the drift monitor compares live request values with, per raw input feature.

The preprocessing job fits them on the training split, on the raw values (before imputation and scaling, since the
monitor sees raw request values), and writes them as `training_distributions.json` beside `feature_spec.json`
(`ml.storage.training_distributions_uri`), before the spec, which is still written last and marks the features
complete. A sibling file rather than a field of `FeatureSpec`:
  * serving loads the spec with every model (and MLflow keeps a copy per run); it never needs the distributions, so
    the spec it loads stays as small as it was and its format (`SPEC_VERSION`) does not change;
  * the monitor reads one small JSON document with its own version, found from the spec's URI (a model version's
    `feature_spec_uri` tag) by replacing the file name;
  * features written before this file existed keep loading as they are; they have no distributions (the monitor
    skips such a model; a forced re-run of preprocessing writes them).

Per numeric feature: interior bin `edges` from the training quantiles (deciles by default, equal edges merged), so
`len(edges) + 1` bins: (-inf, e0], (e0, e1], ..., (e_last, +inf), right-closed as `ml.drift.bin_counts` bins
(numpy's `searchsorted(edges, v, "left")`); `fractions` of the present training values per bin; count, mean,
population std, min, max of the present values; `missing`, the share of training rows whose value was missing before
imputation (null, blank, a null spelling, non-finite, or not a number: what the job reads as null).
Per categorical feature: the spec's kept categories (the model's one-hot columns) and `fractions` of the present
training values per category, then one for `__other__` (rare training categories; live: also unseen ones), the
same layout as `CategoricalFeature.columns()`; `missing` as for numerics (null, blank or a null spelling).
Rows are the training split's distinct rows, the rows the model was fitted on (the spec's means and stds too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ml.features.rules import OTHER

DISTRIBUTIONS_VERSION = 1
DEFAULT_BINS = 10  # deciles
DEFAULT_RELATIVE_ERROR = 0.001  # approxQuantile's: an edge's rank is within 0.1% of the rows of the exact quantile's


@dataclass(frozen=True)
class NumericDistribution:
    name: str
    edges: list[float]  # interior edges, increasing; value v is in bin searchsorted(edges, v, "left")
    fractions: list[float]  # present values per bin (len(edges) + 1, sum 1; all 0 when no value was present)
    count: int  # present (non-missing) training values
    missing: float  # share of training rows with the value missing
    mean: float | None = None  # of the present values; None when there were none
    std: float | None = None  # population standard deviation
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class CategoricalDistribution:
    name: str
    categories: list[str]  # the spec's kept categories, in its order
    fractions: list[float]  # present values per category, then `__other__` (len(categories) + 1, sum 1 or all 0)
    count: int
    missing: float

    @property
    def bins(self) -> list[str]:
        """The bins' names, `fractions` in order: the categories, then `__other__`."""
        return [*self.categories, OTHER]


@dataclass(frozen=True)
class TrainingDistributions:
    dataset: str
    snapshot_id: str
    rows: int  # training rows (distinct) the distributions describe
    numeric: list[NumericDistribution]
    categorical: list[CategoricalDistribution]
    bins: int = DEFAULT_BINS  # quantile bins asked for per numeric feature (fewer where edges coincide)
    relative_error: float = DEFAULT_RELATIVE_ERROR
    split: str = "train"
    version: int = DISTRIBUTIONS_VERSION

    def feature(self, name: str) -> NumericDistribution | CategoricalDistribution:
        """One input feature's distribution (KeyError for a column the spec does not have)."""
        found: list[NumericDistribution | CategoricalDistribution] = [
            *[d for d in self.numeric if d.name == name],
            *[d for d in self.categorical if d.name == name],
        ]
        if not found:
            raise KeyError(name)
        return found[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingDistributions:
        if data.get("version") != DISTRIBUTIONS_VERSION:
            raise ValueError(f"training distributions version {data.get('version')!r} is not {DISTRIBUTIONS_VERSION}")
        return cls(
            dataset=data["dataset"],
            snapshot_id=data["snapshot_id"],
            rows=int(data["rows"]),
            numeric=[NumericDistribution(**f) for f in data["numeric"]],
            categorical=[CategoricalDistribution(**f) for f in data["categorical"]],
            bins=int(data["bins"]),
            relative_error=float(data["relative_error"]),
            split=data["split"],
        )

    @classmethod
    def from_json(cls, text: str) -> TrainingDistributions:
        return cls.from_dict(json.loads(text))
