"""ml.preprocess.job.preprocess on the local SparkSession: the manifest and the spec in an in-memory S3 (moto), the
snapshot's objects in local files, the splits captured instead of written through s3a and the Hive registration
recorded. tests/integration/ml/preprocess/test_job.py runs the real application through spark-submit."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml.features import LABEL_COLUMN, OTHER, SPLITS, FeatureSpec, TrainingDistributions
from ml.preprocess import job, steps
from ml.preprocess.hive import hive_table_name
from ml.settings import LakeSettings
from ml.storage import (
    DataError,
    exists,
    feature_spec_uri,
    features_uri,
    read_json,
    snapshot_uri,
    training_distributions_uri,
    write_json,
)

LAKE = LakeSettings(lake_bucket="lake")
ROWS = 60


class Outputs:
    """What the job wrote: the splits (as pandas) and the Hive registrations."""

    def __init__(self) -> None:
        self.splits: dict[str, Any] = {}
        self.spec_present_while_writing: list[bool] = []
        self.registered: list[tuple[str, FeatureSpec, str]] = []


@pytest.fixture
def outputs(monkeypatch: pytest.MonkeyPatch, moto_client: Any) -> Outputs:
    captured = Outputs()

    def write_splits(spark: Any, encoded: Any, out: Any, counts: dict[str, int]) -> None:
        captured.spec_present_while_writing.append(exists(feature_spec_uri(out), moto_client))
        frame = encoded.toPandas()
        for name in SPLITS:
            captured.splits[name] = frame[frame[steps.SPLIT] == name].drop(columns=steps.SPLIT)

    def register(spark: Any, table: str, spec: FeatureSpec, features: Any) -> None:
        captured.registered.append((table, spec, str(features)))

    monkeypatch.setattr(job, "_write_splits", write_splits)
    monkeypatch.setattr(job, "register_hive_table", register)
    return captured


def write_snapshot(client: Any, folder: Path, *, with_target: bool = True) -> None:
    """Snapshot `snap` of dataset `toy`: two CSV files (a duplicate row, a row without target, an empty column)."""
    header = "x,c,gone,y"
    lines = [f"{i},{'ab'[i % 2]},,{('u' if i % 3 else 'v') if with_target else ''}" for i in range(ROWS)]
    lines[5] = "5,b,,"  # no target
    first, second = folder / "part-00000.csv", folder / "part-00001.csv"
    first.write_text("\n".join([header, *lines[:30]]) + "\n")
    second.write_text("\n".join([header, *lines[30:], lines[0]]) + "\n")  # the first row again
    manifest = {
        "dataset": "toy",
        "snapshot_id": "snap",
        "objects": [
            {"format": "csv", "snapshot_uri": path.as_uri(), "columns": header.split(",")} for path in (first, second)
        ],
        "rows": ROWS + 1,
        "target": "y",
        "task": "classification",
        "columns": {"x": "numeric", "c": "categorical", "gone": "empty", "y": "categorical"},
    }
    write_json(snapshot_uri(LAKE, "toy", "snap").join("manifest.json"), manifest, client)


def run(spark: Any, client: Any, **options: Any) -> dict[str, Any]:
    return job.preprocess(spark, "toy", "snap", lake=LAKE, s3_client=client, **options)


def test_a_snapshot_becomes_splits_a_spec_and_a_table(
    spark: Any, moto_client: Any, outputs: Outputs, tmp_path: Path
) -> None:
    write_snapshot(moto_client, tmp_path)
    summary = run(spark, moto_client)
    spec_uri = feature_spec_uri(features_uri(LAKE, "toy", "snap"))
    spec = FeatureSpec.from_dict(read_json(spec_uri, moto_client))
    assert (spec.dataset, spec.snapshot_id, spec.task, spec.target) == ("toy", "snap", "classification", "y")
    assert [f.name for f in spec.numeric] == ["x"] and [f.name for f in spec.categorical] == ["c"]
    assert spec.classes == ["u", "v"]
    assert spec.dropped == {"without_target": 1, "duplicates": 1}
    assert sum(spec.rows.values()) == ROWS - 1 and spec.rows == {n: len(outputs.splits[n]) for n in SPLITS}
    for frame in outputs.splits.values():
        assert list(frame.columns) == [*spec.feature_columns, LABEL_COLUMN]
    assert outputs.spec_present_while_writing == [False]  # the spec is written last
    assert outputs.registered == [("mlops.toy_features", spec, "s3://lake/datasets/toy/features/snap")]
    assert summary == {
        "dataset": "toy",
        "snapshot_id": "snap",
        "task": "classification",
        "features_uri": "s3://lake/datasets/toy/features/snap",
        "feature_spec_uri": str(spec_uri),
        "hive_table": hive_table_name("toy"),
        "rows": spec.rows,
        "dropped": spec.dropped,
        "num_features": len(spec.feature_columns),
        "skipped": False,
    }


def test_the_training_distributions_are_written_beside_the_spec(
    spark: Any, moto_client: Any, outputs: Outputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_snapshot(moto_client, tmp_path)
    written: list[str] = []
    put_object = moto_client.put_object
    monkeypatch.setattr(moto_client, "put_object", lambda **kw: written.append(kw["Key"]) or put_object(**kw))
    run(spark, moto_client)
    features = features_uri(LAKE, "toy", "snap")
    # the distributions before the spec: the spec is still what marks the features complete
    assert written[-2:] == [training_distributions_uri(features).key, feature_spec_uri(features).key]
    distributions = TrainingDistributions.from_dict(read_json(training_distributions_uri(features), moto_client))
    spec = FeatureSpec.from_dict(read_json(feature_spec_uri(features), moto_client))
    assert (distributions.dataset, distributions.snapshot_id, distributions.rows) == ("toy", "snap", spec.rows["train"])
    x = distributions.feature("x")
    # x is 0..59 without the row that has no target: the training rows' x are distinct integers in 0..59
    assert (x.count, x.missing) == (spec.rows["train"], 0.0) and 0 <= x.min < x.max <= ROWS - 1
    assert x.mean == pytest.approx(spec.numeric[0].mean) and x.std == pytest.approx(spec.numeric[0].std)
    assert len(x.edges) == 9 and sum(x.fractions) == pytest.approx(1.0)
    c = distributions.feature("c")
    assert c.categories == spec.categorical[0].categories and c.bins[-1] == OTHER
    assert sum(c.fractions) == pytest.approx(1.0) and c.fractions[-1] == 0.0  # every category kept


def test_features_without_distributions_are_kept_with_a_warning(
    spark: Any, moto_client: Any, outputs: Outputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_snapshot(moto_client, tmp_path)
    run(spark, moto_client)
    old = training_distributions_uri(features_uri(LAKE, "toy", "snap"))
    moto_client.delete_object(Bucket=old.bucket, Key=old.key)  # features written before distributions existed
    with caplog.at_level(logging.WARNING, logger="ml.preprocess.job"):
        assert run(spark, moto_client)["skipped"] is True
    assert "has no training distributions" in caplog.text
    assert run(spark, moto_client, force=True)["skipped"] is False
    assert exists(old, moto_client)


def test_existing_features_are_kept_unless_forced(
    spark: Any, moto_client: Any, outputs: Outputs, tmp_path: Path
) -> None:
    write_snapshot(moto_client, tmp_path)
    first = run(spark, moto_client)
    spec_uri = feature_spec_uri(features_uri(LAKE, "toy", "snap"))
    spec_text = moto_client.get_object(Bucket="lake", Key=spec_uri.key)["Body"].read()
    again = run(spark, moto_client)
    assert again == {**first, "skipped": True}
    assert len(outputs.spec_present_while_writing) == 1  # nothing rewritten
    assert len(outputs.registered) == 2  # but the table is registered again (a new metastore, a dropped table)
    forced = run(spark, moto_client, force=True)
    assert forced == first
    # forced: the old spec is removed before the splits are rewritten, so a failure leaves no complete-looking output
    assert outputs.spec_present_while_writing == [False, False]
    assert moto_client.get_object(Bucket="lake", Key=spec_uri.key)["Body"].read() == spec_text


def test_options_reach_the_steps(spark: Any, moto_client: Any, outputs: Outputs, tmp_path: Path) -> None:
    write_snapshot(moto_client, tmp_path)
    run(spark, moto_client, max_categories=1, split_shares=(1.0, 0.0))
    spec = FeatureSpec.from_dict(read_json(feature_spec_uri(features_uri(LAKE, "toy", "snap")), moto_client))
    assert len(spec.categorical[0].categories) == 1
    assert spec.rows == {"train": ROWS - 1, "validation": 0, "test": 0}


def test_a_missing_snapshot_is_a_data_error(spark: Any, moto_client: Any, outputs: Outputs) -> None:
    with pytest.raises(DataError, match=r"manifest\.json does not exist: snapshot snap of 'toy' .*run ingest first"):
        run(spark, moto_client)
    assert outputs.splits == {} and outputs.registered == []


def test_no_training_rows_is_a_data_error(spark: Any, moto_client: Any, outputs: Outputs, tmp_path: Path) -> None:
    write_snapshot(moto_client, tmp_path, with_target=False)
    with pytest.raises(DataError, match="snapshot snap of 'toy': no training rows left after cleaning"):
        run(spark, moto_client)
    assert not exists(feature_spec_uri(features_uri(LAKE, "toy", "snap")), moto_client)
    assert outputs.splits == {} and outputs.registered == []


# main: the spark-submit entry point's contract with ml.preprocess.submit (a result line, or an `error:` line)


class StandInSession:
    """What main builds (SparkSession.builder.appName(...).enableHiveSupport().getOrCreate(), in Spark's spelling),
    the Hadoop configuration it writes (sparkContext._jsc.hadoopConfiguration()) and stop()."""

    def __init__(self) -> None:
        self.app_name = ""
        self.hive = False
        self.stopped = False
        self.hadoop: dict[str, str] = {}
        hadoop_conf = SimpleNamespace(set=self.hadoop.__setitem__)
        self.sparkContext = SimpleNamespace(_jsc=SimpleNamespace(hadoopConfiguration=lambda: hadoop_conf))

    @property
    def builder(self) -> StandInSession:
        return self

    def appName(self, name: str) -> StandInSession:
        self.app_name = name
        return self

    def enableHiveSupport(self) -> StandInSession:
        self.hive = True
        return self

    def getOrCreate(self) -> StandInSession:
        return self

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> StandInSession:
    import pyspark.sql

    stand_in = StandInSession()
    monkeypatch.setattr(pyspark.sql, "SparkSession", stand_in)
    # main configures the root logger (force=True) for the driver: not pytest's
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.example:9000")  # main is an entry point: it reads its environment
    return stand_in


def test_main_prints_the_result_line(
    session: StandInSession, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    def fake_preprocess(spark: Any, dataset: str, snapshot_id: str, **options: Any) -> dict[str, Any]:
        seen.update(spark=spark, dataset=dataset, snapshot_id=snapshot_id, **options)
        return {"skipped": False, "rows": {"train": 1}}

    monkeypatch.setattr(job, "preprocess", fake_preprocess)
    assert job.main(["--dataset", "d", "--snapshot", "s", "--lake-bucket", "my-lake", "--max-categories", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == job.RESULT_MARKER + '{"rows": {"train": 1}, "skipped": false}'
    assert seen["spark"] is session and session.hive and session.stopped and session.app_name == "preprocess-d-s"
    assert seen["lake"] == LakeSettings(lake_bucket="my-lake")
    assert seen["s3_client"].meta.endpoint_url == "http://s3.example:9000"
    assert (seen["seed"], seen["max_categories"], seen["min_category_count"], seen["force"]) == (42, 3, 1, False)


def test_main_gives_the_executors_the_credentials_of_its_environment(
    session: StandInSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spark-submit's environment holds the keys (ml.preprocess.submit.application_env); the job copies them into its
    own Hadoop configuration, which Spark ships to executors that do not share the driver's environment."""
    keys = {name: uuid.uuid4().hex for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    before_the_work: dict[str, str] = {}
    monkeypatch.setattr(job, "preprocess", lambda *args, **options: before_the_work.update(session.hadoop) or {})
    assert job.main(["--dataset", "d", "--snapshot", "s"]) == 0
    assert before_the_work == {
        "fs.s3a.access.key": keys["AWS_ACCESS_KEY_ID"],
        "fs.s3a.secret.key": keys["AWS_SECRET_ACCESS_KEY"],
        "fs.s3a.session.token": keys["AWS_SESSION_TOKEN"],
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
    }


def test_main_reports_bad_input_as_an_error_line(
    session: StandInSession, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise DataError("snapshot s of 'd': no training rows left after cleaning")

    monkeypatch.setattr(job, "preprocess", refuse)
    assert job.main(["--dataset", "d", "--snapshot", "s"]) == 2
    captured = capsys.readouterr()
    assert job.RESULT_MARKER not in captured.out
    assert captured.err.splitlines()[-1] == "error: snapshot s of 'd': no training rows left after cleaning"
    assert session.stopped


def test_main_lets_other_failures_through_and_stops_spark(
    session: StandInSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("s3a: connection refused")

    monkeypatch.setattr(job, "preprocess", crash)
    with pytest.raises(OSError, match="connection refused"):
        job.main(["--dataset", "d", "--snapshot", "s"])
    assert session.stopped
