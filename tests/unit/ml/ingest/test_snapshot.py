"""ml.ingest.snapshot.ingest against an in-memory S3 (moto): the snapshot's layout and manifest, idempotence, nothing
left behind by a refused input or a failed copy. tests/integration/ml/ingest/test_snapshot.py runs the same stage
against the real S3 server."""

from __future__ import annotations

import gzip
import io
import re
from typing import Any

import pandas as pd
import pytest

import ml.clients
from ml.datasets import synthetic
from ml.ingest import snapshot
from ml.ingest.config import IngestConfig, IngestResult
from ml.ingest.snapshot import MANIFEST_VERSION, ingest
from ml.settings import LakeSettings, S3Settings
from ml.storage import DataError, S3Uri, latest_snapshot_uri, read_json


def put(client: Any, key: str, body: bytes) -> str:
    client.put_object(Bucket="raw", Key=key, Body=body)
    return f"s3://raw/{key}"


def put_frame(client: Any, key: str, frame: pd.DataFrame) -> str:
    if key.endswith(".parquet"):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return put(client, key, buffer.getvalue())
    return put(client, key, frame.to_csv(index=False).encode())


def lake_listing(client: Any) -> list[tuple[str, str]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="lake")
    return sorted((obj["Key"], obj["ETag"]) for page in pages for obj in page.get("Contents", []))


def config(raw_uri: str = "s3://raw/toy/", target: str = "target", **overrides: Any) -> IngestConfig:
    return IngestConfig(raw_uri=raw_uri, dataset="toy", target=target, **overrides)


def run(s3: S3Settings, lake: LakeSettings, **overrides: Any) -> IngestResult:
    return ingest(config(**overrides), s3=s3, lake=lake)


def test_a_snapshot_and_its_manifest(s3: S3Settings, lake: LakeSettings, client: Any) -> None:
    frame = synthetic(120, numeric=2, categorical=1, seed=1)
    first = put_frame(client, "toy/a.csv", frame)
    second = put(client, "toy/b.csv.gz", gzip.compress(frame.iloc[:30].to_csv(index=False).encode()))
    third = put_frame(client, "toy/c.parquet", frame.iloc[:20][list(reversed(frame.columns))])
    result = run(s3, lake)

    assert result.created and result.rows == 170 and result.task == "classification" and result.warnings == []
    root = f"s3://lake/datasets/toy/snapshots/{result.snapshot_id}"
    assert (result.snapshot_uri, result.manifest_uri) == (root, f"{root}/manifest.json")
    assert result.to_dict()["snapshot_id"] == result.snapshot_id
    manifest = read_json(S3Uri.parse(result.manifest_uri), client)
    assert manifest["version"] == MANIFEST_VERSION and manifest["source_uri"] == "s3://raw/toy/"
    assert (manifest["rows"], manifest["target"], manifest["task"]) == (170, "target", "classification")
    assert manifest["columns"] == {
        "x0": "numeric",
        "x1": "numeric",
        "cat0": "categorical",
        "target": "categorical",
    }
    assert [o["source"] for o in manifest["objects"]] == [first, second, third]
    # one attempt's folder holds the copies the manifest names
    attempt = manifest["objects"][0]["snapshot_uri"].rsplit("/", 1)[0]
    assert re.fullmatch(rf"{root}/data/attempt-[0-9a-f]{{16}}", attempt)
    assert [o["snapshot_uri"] for o in manifest["objects"]] == [
        f"{attempt}/part-00000.csv",
        f"{attempt}/part-00001.csv.gz",
        f"{attempt}/part-00002.parquet",
    ]
    assert [o["format"] for o in manifest["objects"]] == ["csv", "csv", "parquet"]
    # each object's own column order, and Parquet's types
    assert manifest["objects"][2]["columns"] == list(reversed(frame.columns))
    assert manifest["objects"][2]["types"][0] == "string" and manifest["objects"][2]["types"][-1] == "double"
    for obj in manifest["objects"]:
        source, copy = S3Uri.parse(obj["source"]), S3Uri.parse(obj["snapshot_uri"])
        body = client.get_object(Bucket=copy.bucket, Key=copy.key)["Body"].read()
        assert body == client.get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
        assert obj["size"] == len(body) and '"' not in obj["etag"]
    pointer = read_json(latest_snapshot_uri(lake, "toy"), client)
    assert pointer == {
        "snapshot_id": result.snapshot_id,
        "columns": manifest["columns"],
        "manifest": result.manifest_uri,
    }


def test_unchanged_input_is_the_same_snapshot_and_writes_nothing(
    s3: S3Settings, lake: LakeSettings, client: Any
) -> None:
    put_frame(client, "toy/a.csv", synthetic(60, numeric=2, categorical=1, seed=2))
    first = run(s3, lake)
    before = lake_listing(client)
    again = run(s3, lake)
    assert again == IngestResult(**{**first.to_dict(), "created": False})
    assert lake_listing(client) == before
    # new content: another snapshot, and the pointer moves to it
    put_frame(client, "toy/a.csv", synthetic(61, numeric=2, categorical=1, seed=2))
    changed = run(s3, lake)
    assert changed.created and changed.snapshot_id != first.snapshot_id
    assert read_json(latest_snapshot_uri(lake, "toy"), client)["snapshot_id"] == changed.snapshot_id
    # the same files for another target (or a given task) are another snapshot
    assert run(s3, lake, target="cat0").snapshot_id not in (first.snapshot_id, changed.snapshot_id)


def test_a_refused_input_writes_nothing(s3: S3Settings, lake: LakeSettings, client: Any) -> None:
    put(client, "toy/a.csv", b"x,target\n1,a\n2,b\n")
    put(client, "toy/b.csv", b"x,target\n1,\n2,\n")
    with pytest.raises(DataError, match=r"s3://raw/toy/b\.csv: target column 'target' has no values"):
        run(s3, lake)
    assert lake_listing(client) == []


def test_the_bad_share_and_drift_options_are_applied(s3: S3Settings, lake: LakeSettings, client: Any) -> None:
    values = [str(i) for i in range(90)] + ["n.a."] * 10
    put_frame(client, "toy/a.csv", pd.DataFrame({"x": values, "extra": range(100), "target": ["a", "b"] * 50}))
    with pytest.raises(DataError, match="10 of 100 values are not numbers"):
        run(s3, lake)
    first = run(s3, lake, max_bad_share=0.1)
    assert first.created and "treated as missing" in first.warnings[0]

    put_frame(client, "toy/a.csv", pd.DataFrame({"x": range(100), "target": ["a", "b"] * 50}))
    before = lake_listing(client)
    with pytest.raises(DataError, match=rf"schema drift against snapshot {first.snapshot_id}.*'extra' disappeared"):
        run(s3, lake)
    assert lake_listing(client) == before
    accepted = run(s3, lake, allow_schema_drift=True)
    assert accepted.created and any("'extra' disappeared" in w for w in accepted.warnings)
    assert read_json(S3Uri.parse(accepted.manifest_uri), client)["warnings"] == accepted.warnings


class FailingCopies:
    """The real client, except that the copy number `fail_at` raises (and deleting fails too when asked)."""

    def __init__(self, real: Any, fail_at: int, fail_cleanup: bool = False) -> None:
        self.real, self.fail_at, self.fail_cleanup, self.copies = real, fail_at, fail_cleanup, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def copy(self, *args: Any, **kwargs: Any) -> None:
        self.copies += 1
        if self.copies == self.fail_at:
            raise ConnectionError("simulated failure during the copy")
        self.real.copy(*args, **kwargs)

    def delete_objects(self, **kwargs: Any) -> Any:
        if self.fail_cleanup:
            raise ConnectionError("the server is gone")
        return self.real.delete_objects(**kwargs)


@pytest.mark.parametrize("fail_cleanup", [False, True])
def test_a_failed_copy_leaves_no_manifest(
    s3: S3Settings, lake: LakeSettings, client: Any, monkeypatch: pytest.MonkeyPatch, fail_cleanup: bool
) -> None:
    for name in ("a", "b", "c"):
        put(client, f"toy/{name}.csv", f"x,target\n1,{name}\n2,z\n".encode())
    failing = FailingCopies(client, fail_at=2, fail_cleanup=fail_cleanup)
    monkeypatch.setattr(ml.clients, "s3_client", lambda settings: failing)
    # the copy's error, not the clean-up's, reaches the caller
    with pytest.raises(ConnectionError, match="simulated failure during the copy"):
        run(s3, lake)
    leftovers = [key for key, _ in lake_listing(client)]
    assert not any(key.endswith(("manifest.json", "latest.json")) for key in leftovers)
    assert (leftovers == []) is not fail_cleanup
    monkeypatch.undo()
    again = run(s3, lake)  # a re-run completes, and removes what the failed attempt left behind
    assert again.created
    manifest = read_json(S3Uri.parse(again.manifest_uri), client)
    copies = {f"s3://lake/{key}" for key, _ in lake_listing(client) if "/data/" in key}
    assert copies == {obj["snapshot_uri"] for obj in manifest["objects"]}


class SnapshotCommittedMeanwhile:
    """The real client, where another run commits the same snapshot while this one is copying: the manifest check
    at the start finds nothing, and the other run's ingest runs (to completion) just before this run's copy number
    `at`; that copy then fails when `fail` is set."""

    def __init__(self, real: Any, other_run: Any, at: int, fail: bool) -> None:
        self.real, self.other_run, self.at, self.fail, self.copies = real, other_run, at, fail, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def head_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"].endswith("/manifest.json") and self.copies == 0:
            raise self.real.exceptions.ClientError({"Error": {"Code": "404"}}, "HeadObject")
        return self.real.head_object(**kwargs)

    def copy(self, *args: Any, **kwargs: Any) -> None:
        self.copies += 1
        if self.copies == self.at:
            self.other_run()
            if self.fail:
                raise ConnectionError("simulated failure during the copy")
        self.real.copy(*args, **kwargs)


@pytest.mark.parametrize("fail", [True, False])
def test_a_concurrent_run_of_the_same_snapshot_never_deletes_or_replaces_the_committed_one(
    s3: S3Settings, lake: LakeSettings, client: Any, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    for name in ("a", "b", "c"):
        put(client, f"toy/{name}.csv", f"x,target\n1,{name}\n2,z\n".encode())
    committed: list[IngestResult] = []
    racing = SnapshotCommittedMeanwhile(client, lambda: committed.append(ingest(config(), s3=s3, lake=lake)), 2, fail)
    monkeypatch.setattr(ml.clients, "s3_client", lambda settings: racing)
    if fail:
        # the failing run removes only its own copies: the committed snapshot keeps its manifest and every object
        with pytest.raises(ConnectionError, match="simulated failure during the copy"):
            run(s3, lake)
    else:
        # the losing run keeps the winner's snapshot, reports it as not created, and removes its own copies
        assert run(s3, lake) == IngestResult(**{**committed[0].to_dict(), "created": False})
    monkeypatch.undo()
    (winner,) = committed
    manifest = read_json(S3Uri.parse(winner.manifest_uri), client)
    copies = {f"s3://lake/{key}" for key, _ in lake_listing(client) if "/data/" in key}
    assert copies == {obj["snapshot_uri"] for obj in manifest["objects"]}
    for obj in manifest["objects"]:
        copy = S3Uri.parse(obj["snapshot_uri"])
        assert client.get_object(Bucket=copy.bucket, Key=copy.key)["Body"].read().endswith(b"2,z\n")
    assert read_json(latest_snapshot_uri(lake, "toy"), client)["manifest"] == winner.manifest_uri


def test_an_object_changed_after_listing_is_not_snapshotted(
    s3: S3Settings, lake: LakeSettings, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(client, "toy/a.csv", b"x,target\n1,a\n2,b\n")
    listed = snapshot.source_objects

    def stale_listing(raw: S3Uri, client: Any) -> list[dict[str, Any]]:
        # as if the object had been overwritten between the listing and the read
        return [{**obj, "ETag": '"0123456789abcdef0123456789abcdef"'} for obj in listed(raw, client)]

    monkeypatch.setattr(snapshot, "source_objects", stale_listing)
    with pytest.raises(RuntimeError, match=r"s3://raw/toy/a\.csv changed while it was being ingested"):
        run(s3, lake)
    assert lake_listing(client) == []


def test_an_object_changed_between_read_and_copy_is_not_snapshotted(
    s3: S3Settings, lake: LakeSettings, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(client, "toy/a.csv", b"x,target\n1,a\n2,b\n")
    summarise = snapshot.summarise

    def summarise_then_overwrite(where: str, table: Any, config: IngestConfig) -> Any:
        summary = summarise(where, table, config)
        put(client, "toy/a.csv", b"x,target\n1,a\n2,b\n3,c\n")  # read and checked, not copied yet
        return summary

    monkeypatch.setattr(snapshot, "summarise", summarise_then_overwrite)
    with pytest.raises(RuntimeError, match=r"s3://raw/toy/a\.csv changed while it was being ingested"):
        run(s3, lake)
    assert lake_listing(client) == []
