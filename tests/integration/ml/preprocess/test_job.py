"""The Spark preprocessing job (ml.preprocess) against the real S3 server, through spark-submit, on datasets it never
saw. Each step alone is unit-tested on a local session in tests/unit/ml/preprocess/test_steps.py.

Spark is expensive here (two cores shared by everyone), so one module-scoped fixture does all the Spark work once:
  1. ingests five datasets (a hand-made one with a string target, a regression one, a multi-class one with an integer
     target, the shipped `cars` data, and an awkward one: unicode column names with spaces and dots, a categorical
     with a distinct value on every row, a column mixing numbers and words);
  2. `spark-submit`s the job for the hand-made dataset exactly as `python -m ml preprocess` does, and keeps its splits;
  3. runs one more Spark process (a SparkSession built from `ml.preprocess.conf.spark_conf` with Hive support, in a
     child process so that the Derby metastore is free again afterwards) that reruns the hand-made dataset (unchanged,
     then forced), preprocesses the other four, and answers `SELECT count(*)` on each Hive table.
The tests then check the outputs with pandas and with `FeatureSpec.transform` in plain Python.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ml.clients import arrow_filesystem
from ml.datasets import load_shipped, synthetic
from ml.features import LABEL_COLUMN, OTHER, SPLITS, FeatureSpec, normalise_category, parse_number
from ml.ingest.config import IngestConfig, IngestResult
from ml.ingest.snapshot import ingest
from ml.preprocess.hive import hive_table_name
from ml.preprocess.submit import application_env, run_preprocess
from ml.settings import Settings
from ml.storage import S3Uri, delete_prefix, feature_spec_uri, features_uri

NOVEL_ROWS = 3000

# The second Spark process: the job function with a session built the way tests and benchmarks build one.
BATCH_JOB = textwrap.dedent(
    """
    import json, os, sys
    from pyspark.sql import SparkSession
    from ml.clients import s3_client
    from ml.preprocess.conf import spark_conf
    from ml.preprocess.hive import hive_table_name
    from ml.preprocess.job import preprocess
    from ml.settings import Settings

    plan = json.loads(sys.argv[1])
    settings = Settings.from_env(os.environ)  # this script is an entry point
    builder = SparkSession.builder.master("local[2]").appName("test-preprocess").config("spark.driver.memory", "1g")
    for key, value in spark_conf(settings.spark, settings.s3, settings.lake).items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    client = s3_client(settings.s3)
    result = {"runs": [], "hive": {}}
    try:
        for run in plan["runs"]:
            result["runs"].append(
                preprocess(
                    spark, run["dataset"], run["snapshot_id"], lake=settings.lake, s3_client=client, force=run["force"]
                )
            )
        for dataset, snapshot_id in plan["hive"]:
            table = hive_table_name(dataset)
            where = f"WHERE snapshot_id = '{snapshot_id}'"
            total = spark.sql(f"SELECT count(*) FROM {table} {where}").first()[0]
            by_split = spark.sql(f"SELECT split, count(*) AS n FROM {table} {where} GROUP BY split").collect()
            result["hive"][dataset] = {"total": total, **{row["split"]: row["n"] for row in by_split}}
            spark.sql(f"DROP TABLE {table}")  # external: the data stays in S3; keeps the test metastore small
    finally:
        spark.stop()
    print("BATCH_RESULT " + json.dumps(result), flush=True)
    """
)


@dataclass
class Prepared:
    """One dataset after ingest and preprocessing."""

    raw: pd.DataFrame  # what was uploaded, all files together
    ingested: IngestResult
    summary: dict[str, Any] = field(default_factory=dict)
    spec: FeatureSpec | None = None
    splits: dict[str, pd.DataFrame] = field(default_factory=dict)
    hive: dict[str, int] = field(default_factory=dict)


@dataclass
class Runs:
    novel: Prepared
    novel_first_splits: dict[str, pd.DataFrame]
    novel_first_spec_json: str
    novel_rerun: dict[str, Any]
    regression: Prepared
    multiclass: Prepared
    cars: Prepared
    awkward: Prepared
    settings: Settings
    client: Any


# The hand-made dataset


def novel_frame(rows: int = NOVEL_ROWS, seed: int = 7) -> pd.DataFrame:
    """Loan decisions: a unique id (so output rows can be joined back to raw rows), a numeric column with missing,
    infinite and unparseable values, categoricals with missing, rare, padded and number-like values, a boolean, an
    all-empty column, and a string target with missing values."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50_000, 15_000, rows).round(2)
    cities = rng.choice(
        ["Paris", "Lyon", "Nice", "Lille", " Nantes ", "Brest", "Metz", "Tulle"],
        rows,
        p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.049, 0.001],
    )
    codes = rng.choice(["A1", "B2", "C3", "D4", "007", "3.0", "3"], rows, p=[0.25, 0.2, 0.2, 0.15, 0.08, 0.06, 0.06])
    score = (income - 50_000) / 15_000 + (cities == "Paris") * 0.8 - (codes == "A1") * 0.7 + rng.normal(0, 0.6, rows)
    outcome = np.where(score > 0.6, "approved", np.where(score < -0.6, "rejected", "pending")).astype(object)
    frame = pd.DataFrame(
        {
            "applicant_id": np.arange(100_000, 100_000 + rows),
            "income": income.astype(object),
            "city": cities.astype(object),
            "code": codes.astype(object),
            "verified": rng.random(rows) < 0.4,
            "notes": [None] * rows,
            "outcome": outcome,
        }
    )
    frame.loc[rng.random(rows) < 0.05, "income"] = None
    frame.loc[rng.random(rows) < 0.05, "city"] = None
    frame.loc[[10, 11, 12], "income"] = ["inf", "-inf", "NaN"]
    frame.loc[13, "income"] = "unknown"  # under the 1% threshold: a warning, then missing
    frame.loc[20:49, "outcome"] = None  # no target: dropped
    frame.loc[50:59, "outcome"] = "NA"  # the usual spelling of a missing value: dropped too
    return frame


def upload_novel(client: Any, raw_bucket: str, prefix: str) -> pd.DataFrame:
    """Three files: CSV, CSV with the columns in another order, Parquet; plus 20 exact duplicate rows."""
    frame = novel_frame()
    duplicates = frame.iloc[100:120]
    first = pd.concat([frame.iloc[:1500], duplicates])
    second = frame.iloc[1500:2400][list(reversed(frame.columns))]
    third = frame.iloc[2400:].copy()
    third["income"] = pd.to_numeric(third["income"], errors="coerce")  # typed, as Parquet from a real pipeline
    client.put_object(Bucket=raw_bucket, Key=f"{prefix}/part-1.csv", Body=first.to_csv(index=False).encode())
    client.put_object(Bucket=raw_bucket, Key=f"{prefix}/part-2.csv", Body=second.to_csv(index=False).encode())
    buffer = io.BytesIO()
    third.to_parquet(buffer, index=False)
    client.put_object(Bucket=raw_bucket, Key=f"{prefix}/part-3.parquet", Body=buffer.getvalue())
    # The rows as a client would send them: strings from the CSV files (empty -> None), typed values from Parquet.
    rows: list[dict[str, Any]] = []
    for part in ("part-1.csv", "part-2.csv"):
        text = client.get_object(Bucket=raw_bucket, Key=f"{prefix}/{part}")["Body"].read().decode()
        records = csv.DictReader(io.StringIO(text))
        rows += [{k: (v if v != "" else None) for k, v in record.items()} for record in records]
    rows += third.astype(object).where(third.notna(), None).to_dict("records")
    raw = pd.DataFrame(rows, columns=frame.columns)
    raw["applicant_id"] = raw["applicant_id"].astype(np.int64)
    return raw


def multiclass_frame(rows: int = 2000, seed: int = 3) -> pd.DataFrame:
    base = synthetic(rows, numeric=4, categorical=1, seed=seed, task="regression")
    base["target"] = pd.cut(base["target"], bins=4, labels=False).astype(int) + 1  # classes 1..4, integers
    return base


AWKWARD_TARGET = "Zielgröße"


def awkward_frame(rows: int = 2000, seed: int = 5) -> pd.DataFrame:
    """Unicode column names (spaces, a dot, CJK), unicode values, one id per row as a categorical (huge cardinality),
    and a column where 40% of the values are numbers and the rest words (categorical, numbers kept as categories)."""
    rng = np.random.default_rng(seed)
    size = rng.normal(170, 10, rows).round(1)
    city = rng.choice(["Zürich", "São Paulo", "Kraków", "東京"], rows)
    mixed = np.where(rng.random(rows) < 0.4, rng.integers(0, 5, rows).astype(str), rng.choice(["low", "high"], rows))
    return pd.DataFrame(
        {
            "Größe (cm)": size,
            "città.nome": city,
            "名前 id": [f"user-{i:05d}-é" for i in range(rows)],
            "mixed": mixed,
            AWKWARD_TARGET: np.where(size + (city == "Zürich") * 5 > 172, "ja", "nein"),
        }
    )


def read_splits(settings: Settings, dataset: str, snapshot_id: str) -> dict[str, pd.DataFrame]:
    root = features_uri(settings.lake, dataset, snapshot_id)
    filesystem = arrow_filesystem(settings.s3)
    return {
        name: pq.read_table(f"{root.bucket}/{root.key}/{name}", filesystem=filesystem).to_pandas() for name in SPLITS
    }


def read_spec(client: Any, settings: Settings, dataset: str, snapshot_id: str) -> tuple[FeatureSpec, str]:
    uri = feature_spec_uri(features_uri(settings.lake, dataset, snapshot_id))
    text = client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read().decode()
    return FeatureSpec.from_json(text), text


def run_batch(plan: dict[str, Any], workdir: Path, settings: Settings, stack_env: dict[str, str]) -> dict[str, Any]:
    script = workdir / "batch_job.py"
    script.write_text(BATCH_JOB)
    env = {**stack_env, **application_env(settings.spark, settings.s3)}
    completed = subprocess.run(
        [sys.executable, str(script), json.dumps(plan)], capture_output=True, text=True, env=env, timeout=600
    )
    marker = [line for line in completed.stdout.splitlines() if line.startswith("BATCH_RESULT ")]
    assert completed.returncode == 0 and marker, completed.stderr[-6000:] + completed.stdout[-2000:]
    result: dict[str, Any] = json.loads(marker[-1][len("BATCH_RESULT ") :])
    return result


@pytest.fixture(scope="module")
def runs(
    s3_client: Any, settings: Settings, stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    tag = uuid.uuid4().hex[:8]
    names = {kind: f"it_{kind}_{tag}" for kind in ("novel", "regression", "multiclass", "cars", "awkward")}
    names["awkward"] = f"It-Awkward_{tag}"  # a name whose Hive table is escaped (ml.preprocess.hive)
    prefix = f"tests/preprocess-{tag}"
    client, raw_bucket = s3_client, settings.lake.raw_bucket

    def ingested(uri: str, dataset: str, target: str) -> IngestResult:
        return ingest(IngestConfig(uri, dataset, target), s3=settings.s3, lake=settings.lake)

    try:
        novel_raw = upload_novel(client, raw_bucket, f"{prefix}/novel")
        prepared: dict[str, Prepared] = {
            "novel": Prepared(novel_raw, ingested(f"s3://{raw_bucket}/{prefix}/novel/", names["novel"], "outcome"))
        }
        others = {
            "regression": (synthetic(2500, numeric=5, categorical=2, seed=11, task="regression"), "target"),
            "multiclass": (multiclass_frame(), "target"),
            "cars": (load_shipped("cars"), "Miles_per_Gallon"),
            "awkward": (awkward_frame(), AWKWARD_TARGET),
        }
        for kind, (frame, target) in others.items():
            key = f"{prefix}/{kind}/data.parquet" if kind == "regression" else f"{prefix}/{kind}/data.csv"
            body = io.BytesIO()
            frame.to_parquet(body, index=False) if key.endswith(".parquet") else body.write(
                frame.to_csv(index=False).encode()
            )
            client.put_object(Bucket=raw_bucket, Key=key, Body=body.getvalue())
            prepared[kind] = Prepared(frame, ingested(f"s3://{raw_bucket}/{key}", names[kind], target))

        novel = prepared["novel"]
        # The real path: spark-submit of ml/preprocess/job.py, as `python -m ml preprocess` and Airflow run it.
        novel.summary = run_preprocess(
            names["novel"],
            novel.ingested.snapshot_id,
            s3=settings.s3,
            lake=settings.lake,
            spark=replace(settings.spark, master="local[2]"),
        )
        first_splits = read_splits(settings, names["novel"], novel.ingested.snapshot_id)
        _, first_spec_json = read_spec(client, settings, names["novel"], novel.ingested.snapshot_id)

        def run(kind: str, force: bool = False) -> dict[str, Any]:
            return {"dataset": names[kind], "snapshot_id": prepared[kind].ingested.snapshot_id, "force": force}

        plan = {
            "runs": [run("novel"), run("novel", force=True), *[run(kind) for kind in others]],
            "hive": [[names[k], p.ingested.snapshot_id] for k, p in prepared.items()],
        }
        batch = run_batch(plan, tmp_path_factory.mktemp("spark"), settings, stack_env)
        for kind, p in prepared.items():
            p.spec, _ = read_spec(client, settings, names[kind], p.ingested.snapshot_id)
            p.splits = read_splits(settings, names[kind], p.ingested.snapshot_id)
            p.hive = batch["hive"][names[kind]]
        for summary, kind in zip(batch["runs"][2:], others, strict=True):
            prepared[kind].summary = summary
        yield Runs(
            novel=novel,
            novel_first_splits=first_splits,
            novel_first_spec_json=first_spec_json,
            novel_rerun={"unchanged": batch["runs"][0], "forced": batch["runs"][1]},
            regression=prepared["regression"],
            multiclass=prepared["multiclass"],
            cars=prepared["cars"],
            awkward=prepared["awkward"],
            settings=settings,
            client=client,
        )
    finally:
        delete_prefix(S3Uri(raw_bucket, prefix + "/"), client)
        for name in names.values():
            delete_prefix(S3Uri(settings.lake.lake_bucket, f"datasets/{name}/"), client)


# Helpers on the novel dataset's raw rows


def numeric_or_none(value: Any) -> float | None:
    """How the job reads a raw numeric value: plain numbers; anything else (blank, inf, nan, junk) is missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    number = float(value) if isinstance(value, int | float) else parse_number(str(value))
    return number if number is not None and math.isfinite(number) else None


def kept_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """The raw rows the job keeps: a target, and one of each set of duplicates (here: by the unique id)."""
    with_target = raw[raw["outcome"].notna() & (raw["outcome"] != "NA")]
    return with_target.drop_duplicates("applicant_id").set_index("applicant_id", drop=False)


def recover_ids(spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    """Undo the standardisation of the unique id column: joins output rows back to raw rows."""
    feature = next(f for f in spec.numeric if f.name == "applicant_id")
    return np.rint(frame["applicant_id"].to_numpy(np.float64) * feature.std + feature.mean).astype(np.int64)


# The hand-made dataset: string target, categoricals, missing values, several files


def test_ingest_noted_what_it_will_drop(runs: Runs) -> None:
    warnings = runs.novel.ingested.warnings
    assert any("'notes'" in w and "dropped" in w for w in warnings)
    assert any("'income'" in w and "(the first in row " in w and "unknown" not in w for w in warnings)
    assert runs.novel.ingested.task == "classification" and runs.novel.ingested.rows == NOVEL_ROWS + 20


def test_splits_hold_the_spec_columns_and_label(runs: Runs) -> None:
    spec = runs.novel.spec
    assert spec is not None and spec.task == "classification" and spec.target == "outcome"
    assert [f.name for f in spec.numeric] == ["applicant_id", "income"]
    assert [f.name for f in spec.categorical] == ["city", "code", "verified"]
    assert spec.classes == ["approved", "pending", "rejected"]
    for name, frame in runs.novel.splits.items():
        assert list(frame.columns) == [*spec.feature_columns, LABEL_COLUMN], name
        assert all(frame[c].dtype == np.float32 for c in spec.feature_columns)
        assert set(frame[LABEL_COLUMN].unique()) <= {0, 1, 2}
        assert np.isfinite(frame[spec.feature_columns].to_numpy()).all()
    # categoricals: padded and number-like values are keyed as in Python; rare values still kept (no cap reached)
    city, code, verified = spec.categorical
    assert "Nantes" in city.categories and " Nantes " not in city.categories
    assert sorted(code.categories) == ["007", "3", "A1", "B2", "C3", "D4"]
    assert sorted(verified.categories) == ["false", "true"]


def test_rows_kept_and_dropped(runs: Runs) -> None:
    spec, summary = runs.novel.spec, runs.novel.summary
    assert spec is not None
    kept = kept_rows(runs.novel.raw)
    assert sum(spec.rows.values()) == len(kept)
    assert spec.dropped == {"without_target": 40, "duplicates": 20}
    assert {name: len(frame) for name, frame in runs.novel.splits.items()} == spec.rows
    assert summary["rows"] == spec.rows and summary["skipped"] is False
    assert summary["hive_table"] == hive_table_name(spec.dataset) == f"mlops.{spec.dataset}_features"
    # about 80/10/10
    assert 0.75 < spec.rows["train"] / len(kept) < 0.85
    # every kept row is in exactly one split
    ids = np.concatenate([recover_ids(spec, frame) for frame in runs.novel.splits.values()])
    assert sorted(ids.tolist()) == sorted(kept.index.tolist())


def test_hive_table_counts_the_snapshot(runs: Runs) -> None:
    spec = runs.novel.spec
    assert spec is not None
    assert runs.novel.hive == {"total": sum(spec.rows.values()), **spec.rows}


def test_rerun_is_skipped_and_forced_rerun_is_identical(runs: Runs) -> None:
    assert runs.novel_rerun["unchanged"]["skipped"] is True
    assert runs.novel_rerun["forced"]["skipped"] is False
    _, spec_json = read_spec(runs.client, runs.settings, runs.novel.ingested.dataset, runs.novel.ingested.snapshot_id)
    assert spec_json == runs.novel_first_spec_json
    for name in SPLITS:
        first, second = runs.novel_first_splits[name], runs.novel.splits[name]
        columns = list(first.columns)
        sort = lambda frame: frame.sort_values(columns).reset_index(drop=True)  # noqa: E731
        pd.testing.assert_frame_equal(sort(first), sort(second), check_exact=True)


def test_statistics_are_fitted_on_train_only(runs: Runs) -> None:
    spec = runs.novel.spec
    assert spec is not None
    raw = kept_rows(runs.novel.raw)
    train_ids = recover_ids(spec, runs.novel.splits["train"])
    train = raw.loc[train_ids]
    for feature in spec.numeric:
        values = pd.Series([numeric_or_none(v) for v in train[feature.name]], dtype="float64").dropna()
        assert feature.mean == pytest.approx(values.mean(), rel=1e-9)
        assert feature.std == pytest.approx(values.std(ddof=0), rel=1e-9)
        assert feature.fill == pytest.approx(values.mean(), rel=1e-9)
        everything = pd.Series([numeric_or_none(v) for v in raw[feature.name]], dtype="float64").dropna()
        assert feature.mean != everything.mean()
    # The standardised training column: mean 0 and std 1 (the id has no missing values).
    train_ids_column = runs.novel.splits["train"]["applicant_id"].astype(np.float64)
    assert abs(train_ids_column.mean()) < 1e-4 and train_ids_column.std(ddof=0) == pytest.approx(1.0, abs=1e-4)
    # Missing income was filled with the training mean: 0 after standardising; present values have mean 0, std 1.
    income = runs.novel.splits["train"]["income"].astype(np.float64)
    present = train["income"].map(numeric_or_none).notna().to_numpy()
    assert (income[~present] == 0.0).all() and (~present).sum() > 50
    assert abs(income[present].mean()) < 1e-4 and income[present].std(ddof=0) == pytest.approx(1.0, abs=1e-4)
    # Categories come from the training rows: their order is the training frequency.
    city = spec.categorical[0]
    counts = Counter(normalise_category(v) for v in train["city"] if v is not None)
    assert city.categories == sorted(counts, key=lambda c: (-counts[c], c))


def test_spec_transform_reproduces_spark_output(runs: Runs) -> None:
    spec = runs.novel.spec
    assert spec is not None
    raw = kept_rows(runs.novel.raw)
    for name, frame in runs.novel.splits.items():
        ids = recover_ids(spec, frame)
        records = []
        for record in raw.loc[ids].to_dict("records"):
            # Spark reads unparseable numbers as missing; serving refuses them: give Python what Spark saw.
            record["income"] = numeric_or_none(record["income"])
            records.append(record)
        expected = spec.transform(records)
        np.testing.assert_allclose(frame[spec.feature_columns].to_numpy(), expected, rtol=1e-6, atol=1e-6, err_msg=name)
        labels = spec.decode_labels(frame[LABEL_COLUMN].tolist())
        assert labels == raw.loc[ids, "outcome"].tolist()
    # inf, -inf, NaN and junk in a numeric column are missing: the training mean, 0 after standardising
    everything = pd.concat(runs.novel.splits.values())
    special = everything[np.isin(recover_ids(spec, everything), [100_010, 100_011, 100_012, 100_013])]
    assert len(special) == 4 and (special["income"] == 0.0).all()
    # a missing city is `city=__other__`
    missing_city = raw.index[raw["city"].isna()]
    hot = everything[np.isin(recover_ids(spec, everything), missing_city)][f"city={OTHER}"]
    assert len(hot) == len(missing_city) and (hot == 1.0).all()


# Other targets and a shipped dataset


def test_regression_with_a_numeric_target(runs: Runs) -> None:
    prepared = runs.regression
    spec = prepared.spec
    assert spec is not None and spec.task == "regression" and spec.classes is None and spec.num_outputs == 1
    assert sum(spec.rows.values()) == len(prepared.raw) and spec.dropped == {"without_target": 0, "duplicates": 0}
    assert prepared.hive == {"total": len(prepared.raw), **spec.rows}
    labels = pd.concat(prepared.splits.values())[LABEL_COLUMN]
    assert labels.dtype == np.float64
    np.testing.assert_allclose(np.sort(labels.to_numpy()), np.sort(prepared.raw["target"].to_numpy()))
    train = prepared.splits["train"]
    for feature in spec.numeric:
        # 5% missing values are filled with the mean (0): the std of the whole column is a little under 1
        assert abs(train[feature.name].astype(np.float64).mean()) < 1e-4
        assert 0.9 < train[feature.name].astype(np.float64).std(ddof=0) <= 1.0 + 1e-4


def test_multiclass_with_an_integer_target(runs: Runs) -> None:
    prepared = runs.multiclass
    spec = prepared.spec
    assert spec is not None and spec.task == "classification"
    assert spec.classes == ["1", "2", "3", "4"] and spec.num_outputs == 4
    assert prepared.hive["total"] == len(prepared.raw) == sum(spec.rows.values())
    labels = pd.concat(prepared.splits.values())[LABEL_COLUMN]
    assert labels.dtype == np.int32
    decoded = Counter(int(c) for c in spec.decode_labels(labels.tolist()))
    assert decoded == Counter(prepared.raw["target"].tolist())


def test_shipped_cars_dataset(runs: Runs) -> None:
    prepared = runs.cars
    spec = prepared.spec
    assert spec is not None and spec.task == "regression" and spec.target == "Miles_per_Gallon"
    # (the manifest keeps columns sorted by name, so the features come in that order)
    assert [f.name for f in spec.numeric] == [
        "Acceleration",
        "Cylinders",
        "Displacement",
        "Horsepower",
        "Weight_in_lbs",
        "Year",
    ]
    assert [(f.name, sorted(f.categories)) for f in spec.categorical] == [("Origin", ["Europe", "Japan", "USA"])]
    without_target = int(prepared.raw["Miles_per_Gallon"].isna().sum())
    kept = len(prepared.raw) - without_target - spec.dropped["duplicates"]
    assert spec.dropped["without_target"] == without_target == 8
    assert sum(spec.rows.values()) == kept and prepared.hive["total"] == kept
    everything = pd.concat(prepared.splits.values())
    assert np.isfinite(everything[spec.feature_columns].to_numpy()).all()
    assert prepared.summary["num_features"] == len(spec.feature_columns) == 6 + 4


def test_unicode_names_huge_cardinality_and_mixed_types(runs: Runs) -> None:
    awkward = runs.awkward
    spec = awkward.spec
    assert spec is not None and spec.target == AWKWARD_TARGET and spec.classes == ["ja", "nein"]
    assert [f.name for f in spec.numeric] == ["Größe (cm)"]
    by_name = {f.name: f for f in spec.categorical}
    assert sorted(by_name) == sorted(["città.nome", "名前 id", "mixed"])
    city, ids, mixed = by_name["città.nome"], by_name["名前 id"], by_name["mixed"]
    assert sorted(city.categories) == sorted(["Zürich", "São Paulo", "Kraków", "東京"])
    # One distinct value per row: capped at the job's max_categories (20), the rest share the "other" column.
    assert len(ids.categories) == 20 and all(c.startswith("user-") and c.endswith("-é") for c in ids.categories)
    other = ids.columns()[-1]
    train = awkward.splits["train"]
    assert train[other].sum() == spec.rows["train"] - 20
    assert (awkward.splits["test"][other] == 1.0).all()  # every id is new outside the training split
    # Numbers among words: a categorical whose categories keep the numbers as text.
    assert sorted(mixed.categories) == ["0", "1", "2", "3", "4", "high", "low"]
    for name, frame in awkward.splits.items():
        assert list(frame.columns) == [*spec.feature_columns, LABEL_COLUMN], name
        assert np.isfinite(frame[spec.feature_columns].to_numpy()).all()
    assert sum(spec.rows.values()) == len(awkward.raw)
    # the escaped table name (upper case, "-") works through Spark and the metastore: created, counted, dropped
    assert awkward.summary["hive_table"] == hive_table_name(spec.dataset) and ".__it_0_awkward" in hive_table_name(
        spec.dataset
    )
    assert awkward.hive == {"total": len(awkward.raw), **spec.rows}


def test_training_distributions_are_written_beside_the_spec(runs: Runs, s3_client: Any, settings: Settings) -> None:
    """What the drift monitor compares live traffic with (ml.features.distributions), from the same training rows as
    the spec's statistics: every input feature, bin shares summing to 1, the spec's mean and categories."""
    from ml.features.distributions import TrainingDistributions
    from ml.storage import training_distributions_uri

    spec = runs.novel.spec
    assert spec is not None
    uri = training_distributions_uri(features_uri(settings.lake, spec.dataset, spec.snapshot_id))
    text = s3_client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read().decode()
    distributions = TrainingDistributions.from_json(text)
    assert (distributions.dataset, distributions.snapshot_id) == (spec.dataset, spec.snapshot_id)
    assert [d.name for d in distributions.numeric] == [f.name for f in spec.numeric]
    assert [d.name for d in distributions.categorical] == [f.name for f in spec.categorical]
    for numeric, feature in zip(distributions.numeric, spec.numeric, strict=True):
        assert sum(numeric.fractions) == pytest.approx(1.0)
        assert numeric.mean == pytest.approx(feature.mean, rel=1e-6)
    for categorical, category_feature in zip(distributions.categorical, spec.categorical, strict=True):
        assert categorical.categories == category_feature.categories
        assert sum(categorical.fractions) == pytest.approx(1.0)
