"""The training distributions (ml.features.distributions) fitted on the cleaned training rows (cached by the job):
one aggregation for counts and moments, one `approxQuantile` call for every numeric column's bin edges, and
conditional counts of every bin (a comparison per edge and per kept category, CODEGEN_FIELDS at a time: one pass
for a few columns). Like the other steps, only built-in expressions run on executors.

The edges only have to be near the quantiles: the fractions are then counted exactly, so edges a little off make the
bins a little unequal, never wrong. That is why the quantiles of a large training split come from a sample (at most
about `QUANTILE_SAMPLE_ROWS` rows): inserting every value into approxQuantile's summaries was the costliest part
(about 5 s for 6 columns of 800,000 rows on 2 busy cores, 2 s from the sample), and sampling 200,000 rows moves a
decile's rank by about 0.1% (one standard deviation).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from ml.features import CategoricalFeature
from ml.features.distributions import (
    DEFAULT_BINS,
    DEFAULT_RELATIVE_ERROR,
    CategoricalDistribution,
    NumericDistribution,
    TrainingDistributions,
)
from ml.preprocess.steps import quote

QUANTILE_SAMPLE_ROWS = 200_000
SAMPLE_SEED = 7  # a fixed seed: a re-run on the same partitioning samples the same rows
# Fields per aggregation: Spark stops generating code for a plan wider than spark.sql.codegen.maxFields (100).
CODEGEN_FIELDS = 64


def quantile_edges(
    train: Any, numeric: Sequence[str], bins: int, relative_error: float, *, rows: int | None = None
) -> list[list[float]]:
    """Each numeric column's interior bin edges: its 1/bins ... (bins-1)/bins quantiles of the present values, equal
    ones merged (a column with few distinct values gets fewer bins); [] for a column with no value. Given the
    number of `rows`, more than `QUANTILE_SAMPLE_ROWS` are sampled down to about that many first."""
    from pyspark.sql import functions as F

    if not numeric:
        return []
    if rows is not None and rows > QUANTILE_SAMPLE_ROWS:
        train = train.sample(fraction=QUANTILE_SAMPLE_ROWS / rows, seed=SAMPLE_SEED)
    # Positional aliases: approxQuantile resolves its names as column paths, so "a.b" would mean a struct's field.
    columns = train.select(*[F.col(quote(name)).alias(f"n{i}") for i, name in enumerate(numeric)])
    probabilities = [step / bins for step in range(1, bins)]
    quantiles = columns.approxQuantile(columns.columns, probabilities, relative_error)  # nulls are left out
    return [sorted({float(edge) for edge in edges}) for edges in quantiles]


def fit_distributions(
    train: Any,
    numeric: Sequence[str],
    categorical: Sequence[CategoricalFeature],
    *,
    dataset: str,
    snapshot_id: str,
    bins: int = DEFAULT_BINS,
    relative_error: float = DEFAULT_RELATIVE_ERROR,
) -> TrainingDistributions:
    """The distributions of the cleaned training rows: numerics on their raw values (nulls are the missing ones),
    categories over the spec's kept `categorical` categories."""
    from pyspark.sql import functions as F

    # Counts and moments: a few fields per column (a wide aggregation, over ~100 fields, loses Spark's code generation).
    aggregates = [F.count(F.lit(1)).alias("rows")]
    for i, name in enumerate(numeric):
        value = F.col(quote(name))
        aggregates += [
            F.count(value).alias(f"n{i}_count"),
            F.mean(value).alias(f"n{i}_mean"),
            F.stddev_pop(value).alias(f"n{i}_std"),
            F.min(value).alias(f"n{i}_min"),
            F.max(value).alias(f"n{i}_max"),
        ]
    aggregates += [F.count(quote(feature.name)).alias(f"c{i}_count") for i, feature in enumerate(categorical)]
    stats = train.agg(*aggregates).first()
    rows = int(stats["rows"])
    edges = quantile_edges(train, numeric, bins, relative_error, rows=rows)
    present = [int(stats[f"n{i}_count"]) for i in range(len(numeric))]
    present += [int(stats[f"c{i}_count"]) for i in range(len(categorical))]
    counts = _bin_counts(train, numeric, edges, categorical, present)

    numeric_distributions = []
    for i, (name, column_edges) in enumerate(zip(numeric, edges, strict=True)):
        count = present[i]
        numeric_distributions.append(
            NumericDistribution(
                name=name,
                edges=column_edges,
                fractions=_fractions(counts[i], count),
                count=count,
                missing=_share(rows - count, rows),
                mean=_stable(stats[f"n{i}_mean"]),
                std=_stable(stats[f"n{i}_std"]),
                min=_float(stats[f"n{i}_min"]),
                max=_float(stats[f"n{i}_max"]),
            )
        )
    categorical_distributions = []
    for i, feature in enumerate(categorical):
        count = present[len(numeric) + i]
        categorical_distributions.append(
            CategoricalDistribution(
                name=feature.name,
                categories=list(feature.categories),
                fractions=_fractions(counts[len(numeric) + i], count),
                count=count,
                missing=_share(rows - count, rows),
            )
        )
    return TrainingDistributions(
        dataset=dataset,
        snapshot_id=snapshot_id,
        rows=rows,
        numeric=numeric_distributions,
        categorical=categorical_distributions,
        bins=bins,
        relative_error=relative_error,
    )


def _bin_counts(
    train: Any,
    numeric: Sequence[str],
    edges: Sequence[Sequence[float]],
    categorical: Sequence[CategoricalFeature],
    present: Sequence[int],
) -> list[list[int]]:
    """Present values per bin, per feature (numerics, then categoricals; `present`: each one's present values), from
    conditional counts: a numeric column's values at or below each edge (a right-closed bin is the difference of
    two, as numpy's searchsorted(edges, v, "left") in ml.drift.bin_counts), a categorical column's values equal to
    each kept category (the rest are `__other__`).

    One comparison per field, counted in aggregations of at most CODEGEN_FIELDS fields: each is a pass over the
    cached rows that reads only its columns. (Exploding each row into a code per feature and grouping by the codes
    cost 65 s of a 145-s preprocessing of 10M rows on 2 cores: 80M generated rows through a hash aggregation.)"""
    from pyspark.sql import functions as F

    fields = []
    for name, column_edges in zip(numeric, edges, strict=True):
        fields += [F.count_if(F.col(quote(name)) <= F.lit(edge)) for edge in column_edges]
    for feature in categorical:
        fields += [F.count_if(F.col(quote(feature.name)) == F.lit(category)) for category in feature.categories]
    totals: list[int] = []
    for start in range(0, len(fields), CODEGEN_FIELDS):
        chunk = fields[start : start + CODEGEN_FIELDS]
        totals += [int(value) for value in train.agg(*[f.alias(f"f{i}") for i, f in enumerate(chunk)]).first()]
    counts, position = [], 0
    for column_edges, count in zip(edges, present[: len(numeric)], strict=True):
        at_or_below = totals[position : position + len(column_edges)]
        position += len(column_edges)
        bounds = [0, *at_or_below, count]
        counts.append([high - low for low, high in pairwise(bounds)])
    for feature, count in zip(categorical, present[len(numeric) :], strict=True):
        kept = totals[position : position + len(feature.categories)]
        position += len(feature.categories)
        counts.append([*kept, count - sum(kept)])
    return counts


def _fractions(counts: list[int], total: int) -> list[float]:
    return [_share(count, total) for count in counts]


def _share(part: int, total: int) -> float:
    return part / total if total else 0.0


def _stable(value: Any) -> float | None:
    """12 significant digits, as the spec's means and stds: another partitioning sums in another order and must give
    the same file."""
    return None if value is None else float(f"{float(value):.12g}")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
