"""The preprocessing of one snapshot as DataFrame -> DataFrame steps (ml.preprocess.job chains them).

Only built-in column expressions run on executors, so executors need nothing from this package. Cleaning mirrors
ml.features exactly: a number is what `NUMBER_PATTERN` accepts (Spark's own cast also takes "3D", "1f" or hex), a
category is keyed like `normalise_category`, and the usual spellings of "no value" are missing, never a category.
The split is a hash of each row's content: stable across re-runs and partitionings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ml.features import (
    BOOLEAN_SPELLINGS,
    INTEGRAL_DECIMAL_PATTERN,
    LABEL_COLUMN,
    NULL_TOKENS,
    NUMBER_PATTERN,
    CategoricalFeature,
    NumericFeature,
)
from ml.storage import S3Uri

TARGET = "__target"  # the cleaned target while preprocessing (the label column is derived from it at the end)
COPIES = "__copies"  # how many input rows one deduplicated row stands for
SPLIT = "split"
SPLIT_BUCKETS = 10_000


def quote(name: str) -> str:
    """A column name as a Spark SQL identifier (any characters, backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def spark_path(uri: str) -> str:
    """Where Spark reads a snapshot object: an S3 URI through s3a; any other URI (file://, hdfs://) as it is."""
    return S3Uri.parse(uri).s3a if uri.startswith(("s3://", "s3a://")) else uri


def read_snapshot(spark: Any, objects: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Any:
    """The snapshot's objects (manifest entries, `snapshot_uri` an S3 URI or any URI Spark reads) as one DataFrame
    of `columns`.

    Spark would apply the first CSV file's header to all files by position, so files are read in groups of the same
    header (and, for Parquet, the same types) and unioned by name. CSV is read by header with RFC 4180 quoting, as the
    ingest check read it (`""` inside quotes is a quote). A column typed differently in different files (CSV strings,
    Parquet numbers or booleans) is read as strings everywhere, and cleaned like CSV."""
    from pyspark.sql import functions as F

    groups: dict[tuple[Any, ...], list[str]] = {}
    for obj in objects:
        types = tuple(obj.get("types") or ()) if obj["format"] == "parquet" else ()
        groups.setdefault((obj["format"], tuple(obj.get("columns") or ()), types), []).append(
            spark_path(obj["snapshot_uri"])
        )
    frames = []
    for (fmt, *_), paths in sorted(groups.items(), key=lambda item: item[1][0]):
        if fmt == "csv":
            frame = spark.read.options(header=True, mode="PERMISSIVE", escape='"').csv(paths)
        else:
            frame = spark.read.parquet(*paths)
        frames.append(frame.select(*[F.col(quote(name)) for name in columns]))
    mixed = {name for name in columns if len({dict(frame.dtypes)[name] for frame in frames}) > 1}
    if mixed:
        frames = [
            frame.select(*[F.col(quote(n)).cast("string").alias(n) if n in mixed else F.col(quote(n)) for n in columns])
            for frame in frames
        ]
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame)
    return raw


def parse_values(raw: Any, numeric: Sequence[str], categorical: Sequence[str], target: str, task: str) -> Any:
    """Numbers as doubles (anything but a plain decimal number -> null), categories as trimmed strings keyed like
    `normalise_category`; the target as `__target` (a number for regression, a category otherwise)."""
    from pyspark.sql import functions as F

    types = dict(raw.dtypes)

    def parse_number(name: str) -> Any:
        value = F.expr(f"try_cast({quote(name)} as double)")
        return F.when(F.col(quote(name)).rlike(NUMBER_PATTERN), value) if types[name] == "string" else value

    def parse_category(name: str) -> Any:
        column = F.col(quote(name))
        text = F.trim(column.cast("string"))
        if types[name] in ("float", "double"):
            # 3.0 is category "3", as in Python (the bound keeps the cast exact and clear of overflow).
            integral = (F.abs(column) < 1e15) & (column == F.floor(column))
            text = F.when(integral, column.cast("bigint").cast("string")).otherwise(text)
        # "3.0" and "3" are the same category, as in `normalise_category`. The pattern needs a ".": a text without
        # one (most categories) is left as it is without running the regular expression.
        return F.when(text.contains("."), F.regexp_replace(text, INTEGRAL_DECIMAL_PATTERN, "$1")).otherwise(text)

    return raw.select(
        *[parse_number(name).alias(name) for name in numeric],
        *[parse_category(name).alias(name) for name in categorical],
        (parse_number(target) if task == "regression" else parse_category(target)).alias(TARGET),
    )


def clean_values(parsed: Any, numeric: Sequence[str], categorical: Sequence[str], task: str) -> Any:
    """Non-finite numbers -> null; blank strings and null spellings -> null; boolean spellings -> true/false.

    A projection of its own after `parse_values`, so that each parsed value is computed once and then only referenced
    (nesting the expressions made Spark evaluate copies of the regular expressions: it cost more than the scan)."""
    from pyspark.sql import functions as F

    def clean_number(name: str) -> Any:
        value = F.col(quote(name))
        return F.when(F.isnan(value) | (F.abs(value) == float("inf")), None).otherwise(value)

    def clean_category(name: str) -> Any:
        text = F.col(quote(name))
        cleaned = F.when((text == "") | text.isin(*NULL_TOKENS), None)
        for key in sorted(set(BOOLEAN_SPELLINGS.values())):  # "True" and "true" are one category
            cleaned = cleaned.when(text.isin(*[s for s, k in BOOLEAN_SPELLINGS.items() if k == key]), F.lit(key))
        return cleaned.otherwise(text)

    return parsed.select(
        *[clean_number(name).alias(name) for name in numeric],
        *[clean_category(name).alias(name) for name in categorical],
        (clean_number(TARGET) if task == "regression" else clean_category(TARGET)).alias(TARGET),
    )


def deduplicate(cleaned: Any) -> Any:
    """Rows with a target, each distinct row once, with `__copies` counting the input rows it stands for."""
    from pyspark.sql import functions as F

    values = [F.col(quote(c)) for c in cleaned.columns]
    return cleaned.where(F.col(TARGET).isNotNull()).groupBy(*values).agg(F.count(F.lit(1)).alias(COPIES))


def assign_split(rows: Any, seed: int, shares: tuple[float, float]) -> Any:
    """Adds `split` (train / validation / test) from a hash of the row's values and `seed`: independent of
    partitioning and order. `shares` are the train and validation fractions; the test split takes the rest."""
    from pyspark.sql import functions as F

    values = [F.col(quote(c)) for c in rows.columns if c != COPIES]
    bucket = F.pmod(F.xxhash64(*values, F.lit(seed)), F.lit(SPLIT_BUCKETS))
    train_edge, validation_edge = int(shares[0] * SPLIT_BUCKETS), int(sum(shares) * SPLIT_BUCKETS)
    split = F.when(bucket < train_edge, "train").when(bucket < validation_edge, "validation").otherwise("test")
    return rows.withColumn(SPLIT, split)


def split_counts(prepared: Any) -> tuple[dict[str, int], int]:
    """(distinct rows per split, input rows with a target)."""
    from pyspark.sql import functions as F

    totals = prepared.groupBy(SPLIT).agg(F.count(F.lit(1)).alias("rows"), F.sum(COPIES).alias("copies"))
    counts, with_target = {}, 0
    for row in totals.collect():
        counts[row[SPLIT]] = int(row["rows"])
        with_target += int(row["copies"])
    return counts, with_target


def fit_numeric(train: Any, numeric: Sequence[str]) -> list[NumericFeature]:
    """Mean and population std of each numeric column on the training rows, in one pass. Missing values take the
    training mean (0 after standardising); a constant column keeps std 1."""
    from pyspark.sql import functions as F

    if not numeric:
        return []
    stats = train.select(
        *[F.mean(quote(n)).alias(f"mean_{i}") for i, n in enumerate(numeric)],
        *[F.stddev_pop(quote(n)).alias(f"std_{i}") for i, n in enumerate(numeric)],
    ).first()
    features = []
    for i, name in enumerate(numeric):
        mean, std = stats[f"mean_{i}"], stats[f"std_{i}"]
        # 12 significant digits: a re-run on another partitioning (another summation order) gives the same spec.
        mean = _stable(mean) if mean is not None else 0.0
        std = _stable(std) if std else 1.0
        features.append(NumericFeature(name=name, fill=mean, mean=mean, std=std))
    return features


def _stable(value: float) -> float:
    return float(f"{float(value):.12g}")


def fit_categorical(
    train: Any, categorical: Sequence[str], max_categories: int, min_count: int = 1
) -> list[CategoricalFeature]:
    """The most frequent training categories of each column (ties by name), at most `max_categories`, each seen at
    least `min_count` times; everything else becomes `__other__` when encoded."""
    from pyspark.sql import functions as F

    features = []
    for name in categorical:
        frequent = (
            train.where(F.col(quote(name)).isNotNull())
            .groupBy(quote(name))
            .count()
            .where(F.col("count") >= min_count)
            .orderBy(F.desc("count"), F.asc(quote(name)))
            .limit(max_categories)
            .collect()
        )
        features.append(CategoricalFeature(name=name, categories=[str(row[0]) for row in frequent]))
    return features


def class_labels(prepared: Any) -> list[str]:
    """The target's distinct values, sorted: label i is classes[i]."""
    return sorted(str(row[0]) for row in prepared.select(TARGET).distinct().collect())


def encode(
    prepared: Any,
    numeric: Sequence[NumericFeature],
    categorical: Sequence[CategoricalFeature],
    classes: list[str] | None,
) -> Any:
    """The model's input columns (float32, in `FeatureSpec.feature_columns` order), `label` and `split`: numerics
    standardised with the training statistics, categories one-hot with an `__other__` column, classes as indices."""
    from pyspark.sql import functions as F

    columns = []
    for feature in numeric:
        value = F.coalesce(F.col(quote(feature.name)), F.lit(feature.fill))
        columns.append(((value - F.lit(feature.mean)) / F.lit(feature.std)).cast("float").alias(feature.name))
    for cat in categorical:
        known = F.col(quote(cat.name)).isin(cat.categories) if cat.categories else F.lit(False)
        for category, column in zip(cat.categories, cat.columns(), strict=False):
            columns.append(F.when(F.col(quote(cat.name)) == category, 1.0).otherwise(0.0).cast("float").alias(column))
        columns.append(F.when(known, 0.0).otherwise(1.0).cast("float").alias(cat.columns()[-1]))
    if classes is not None:
        label = (F.array_position(F.array(*[F.lit(c) for c in classes]), F.col(TARGET)) - 1).cast("int")
    else:
        label = F.col(TARGET).cast("double")
    return prepared.select(*columns, label.alias(LABEL_COLUMN), SPLIT)
