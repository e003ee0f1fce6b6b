"""ml.ingest.snapshot against the real local S3 server: snapshots, idempotence, and every kind of bad input.

Each test uses its own raw prefix and dataset name, and removes both afterwards. The endpoint and keys come from the
`settings` fixture; tests/unit/ml/ingest/ checks the same stage against an in-memory S3.
"""

from __future__ import annotations

import gzip
import io
import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import ml.clients
from ml.datasets import synthetic
from ml.ingest import snapshot
from ml.ingest.config import IngestConfig, IngestResult
from ml.ingest.read import MAX_ROW_BYTES
from ml.settings import Settings
from ml.storage import DataError, S3Uri, delete_prefix, latest_snapshot_uri, read_json


class Area:
    """A raw prefix and a dataset name of one test, with helpers to fill and inspect them."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.raw_bucket, self.lake_bucket = settings.lake.raw_bucket, settings.lake.lake_bucket
        self.dataset = f"it_ingest_{uuid.uuid4().hex[:10]}"
        self.prefix = f"tests/{self.dataset}"

    def put(self, name: str, body: bytes) -> str:
        self.client.put_object(Bucket=self.raw_bucket, Key=f"{self.prefix}/{name}", Body=body)
        return f"s3://{self.raw_bucket}/{self.prefix}/{name}"

    def put_frame(self, name: str, frame: pd.DataFrame) -> str:
        if name.endswith(".parquet"):
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            return self.put(name, buffer.getvalue())
        return self.put(name, frame.to_csv(index=False).encode())

    @property
    def raw_prefix(self) -> str:
        return f"s3://{self.raw_bucket}/{self.prefix}/"

    def config(self, raw_uri: str | None = None, target: str = "target", **overrides: Any) -> IngestConfig:
        return IngestConfig(raw_uri=raw_uri or self.raw_prefix, dataset=self.dataset, target=target, **overrides)

    def lake_listing(self) -> list[tuple[str, str, int, Any]]:
        """Everything the pipeline wrote for this dataset, with what would change if an object were rewritten."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.lake_bucket, Prefix=f"datasets/{self.dataset}/"
        )
        return sorted((o["Key"], o["ETag"], o["Size"], o["LastModified"]) for p in pages for o in p.get("Contents", []))

    def lake_keys(self) -> list[str]:
        return [key for key, *_ in self.lake_listing()]

    def ingest(self, raw_uri: str | None = None, **overrides: Any) -> IngestResult:
        return snapshot.ingest(self.config(raw_uri, **overrides), s3=self.settings.s3, lake=self.settings.lake)

    def json(self, uri: S3Uri | str) -> Any:
        return read_json(uri if isinstance(uri, S3Uri) else S3Uri.parse(uri), self.client)

    def latest(self) -> Any:
        return self.json(latest_snapshot_uri(self.settings.lake, self.dataset))

    def read(self, uri: str) -> bytes:
        parsed = S3Uri.parse(uri)
        body: bytes = self.client.get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()
        return body


@pytest.fixture
def area(s3_client: Any, settings: Settings) -> Iterator[Area]:
    created = Area(s3_client, settings)
    yield created
    delete_prefix(S3Uri(created.raw_bucket, created.prefix + "/"), s3_client)
    delete_prefix(S3Uri(created.lake_bucket, f"datasets/{created.dataset}/"), s3_client)


def small_frame(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    return synthetic(rows, numeric=3, categorical=2, seed=seed)


# Round trips


def test_csv_round_trip(area: Area) -> None:
    frame = small_frame()
    source = area.put_frame("data.csv", frame)
    result = area.ingest(source)

    assert result.created and result.rows == len(frame) and result.task == "classification"
    assert result.target == "target" and result.dataset == area.dataset
    assert result.snapshot_uri == f"s3://{area.lake_bucket}/datasets/{area.dataset}/snapshots/{result.snapshot_id}"
    manifest = area.json(result.manifest_uri)
    assert manifest["snapshot_id"] == result.snapshot_id and manifest["rows"] == len(frame)
    assert manifest["columns"] == {
        "x0": "numeric",
        "x1": "numeric",
        "x2": "numeric",
        "cat0": "categorical",
        "cat1": "categorical",
        "target": "categorical",
    }
    [copied] = manifest["objects"]
    assert copied["source"] == source and copied["format"] == "csv" and copied["columns"] == list(frame.columns)
    attempt = copied["snapshot_uri"].removeprefix(f"{result.snapshot_uri}/data/").removesuffix("/part-00000.csv")
    assert re.fullmatch("attempt-[0-9a-f]{16}", attempt), copied["snapshot_uri"]
    assert area.read(copied["snapshot_uri"]) == area.read(source)
    assert area.lake_keys() == sorted(
        [
            f"datasets/{area.dataset}/latest.json",
            f"datasets/{area.dataset}/snapshots/{result.snapshot_id}/data/{attempt}/part-00000.csv",
            f"datasets/{area.dataset}/snapshots/{result.snapshot_id}/manifest.json",
        ]
    )
    pointer = area.latest()
    assert pointer["snapshot_id"] == result.snapshot_id and pointer["columns"] == manifest["columns"]


def test_parquet_round_trip(area: Area) -> None:
    frame = synthetic(250, numeric=2, task="regression")
    source = area.put_frame("data.parquet", frame)
    result = area.ingest(source)
    assert result.created and result.rows == 250 and result.task == "regression"
    manifest = area.json(result.manifest_uri)
    [copied] = manifest["objects"]
    assert copied["format"] == "parquet" and copied["snapshot_uri"].endswith("/part-00000.parquet")
    assert copied["types"][copied["columns"].index("x0")] == "double"
    restored = pq.read_table(io.BytesIO(area.read(copied["snapshot_uri"]))).to_pandas()
    pd.testing.assert_frame_equal(restored, frame)


def test_gzipped_csv_round_trip(area: Area) -> None:
    frame = small_frame(120)
    source = area.put("data.csv.gz", gzip.compress(frame.to_csv(index=False).encode()))
    result = area.ingest(source)
    assert result.created and result.rows == 120
    [copied] = area.json(result.manifest_uri)["objects"]
    assert copied["snapshot_uri"].endswith("/part-00000.csv.gz")


def test_prefix_with_two_files(area: Area) -> None:
    first, second = small_frame(200, seed=1), small_frame(100, seed=2)
    area.put_frame("part-a.csv", first)
    # Another column order and another format: the columns are matched by name.
    area.put_frame("part-b.parquet", second[list(reversed(second.columns))])
    area.put("README.txt", b"not data: ignored")
    result = area.ingest()
    assert result.created and result.rows == 300
    manifest = area.json(result.manifest_uri)
    sources = [o["source"] for o in manifest["objects"]]
    assert sources == [f"{area.raw_prefix}part-a.csv", f"{area.raw_prefix}part-b.parquet"]
    copies = [o["snapshot_uri"].rsplit("/", 1)[1] for o in manifest["objects"]]
    assert copies == ["part-00000.csv", "part-00001.parquet"]
    assert manifest["objects"][1]["columns"] == list(reversed(second.columns))
    assert len(area.lake_keys()) == 4  # two data objects, the manifest, latest.json


# Idempotence


def test_unchanged_input_gives_the_same_snapshot_and_writes_nothing(area: Area) -> None:
    area.put_frame("a.csv", small_frame(200, seed=3))
    area.put_frame("b.csv", small_frame(200, seed=4))
    first = area.ingest()
    before = area.lake_listing()
    again = area.ingest()
    assert again.snapshot_id == first.snapshot_id and again.created is False
    assert (again.rows, again.task, again.warnings) == (first.rows, first.task, first.warnings)
    assert area.lake_listing() == before

    # Rewriting an object with the same bytes keeps the id (content, not upload time).
    area.put_frame("a.csv", small_frame(200, seed=3))
    assert area.ingest().snapshot_id == first.snapshot_id
    assert area.lake_listing() == before

    # Changed content: a new snapshot beside the old one, and the pointer moves.
    area.put_frame("b.csv", small_frame(201, seed=4))
    changed = area.ingest()
    assert changed.created and changed.snapshot_id != first.snapshot_id and changed.rows == 401
    keys = area.lake_keys()
    assert any(f"/snapshots/{first.snapshot_id}/manifest.json" in key for key in keys)
    assert area.latest()["snapshot_id"] == changed.snapshot_id

    # The same files for another target are another snapshot (its manifest records that target).
    other_target = area.ingest(target="cat0")
    assert other_target.snapshot_id not in (first.snapshot_id, changed.snapshot_id)
    assert other_target.created and other_target.target == "cat0"


def test_a_run_that_loses_the_commit_keeps_the_committed_snapshot(area: Area, monkeypatch: pytest.MonkeyPatch) -> None:
    area.put_frame("a.csv", small_frame(120, seed=5))
    first = area.ingest()
    before = area.lake_listing()
    # As if this run had checked for the manifest before the first run created it: it copies into its own attempt
    # folder, and the server refuses its manifest (If-None-Match: *).
    monkeypatch.setattr(snapshot, "exists", lambda uri, client: False)
    second = area.ingest()
    assert second == IngestResult(**{**first.to_dict(), "created": False})
    assert area.lake_listing() == before  # the committed manifest and copies untouched, the loser's copies removed


# Bad inputs: a DataError naming the object and the column or reason; nothing written to the lake.


def _truncated_parquet() -> bytes:
    buffer = io.BytesIO()
    small_frame(500).to_parquet(buffer, index=False)
    data = buffer.getvalue()
    return data[: len(data) * 2 // 3]


def _bad_share_csv() -> bytes:
    values = [str(i) for i in range(95)] + ["n.a."] * 5
    return pd.DataFrame({"x": values, "target": ["a", "b"] * 50}).to_csv(index=False).encode()


# case -> ({file name: bytes}, regex the message must match: FILE is the bad object's URI, RAW the ingested prefix)
BAD_INPUTS: dict[str, tuple[dict[str, bytes], str]] = {
    "empty_file": ({"data.csv": b""}, r"FILE: the file is empty \(0 bytes\)"),
    "header_only": ({"data.csv": b"x,cat,target\n"}, r"FILE: no data rows"),
    "missing_target": (
        {"data.csv": b"x,label\n1,a\n2,b\n"},
        r"FILE: target column 'target' is missing \(columns: x, label\)",
    ),
    "wrong_delimiter": (
        {"data.csv": b"x;cat;target\n1;a;yes\n2;b;no\n"},
        r"FILE: only one column 'x;cat;target'.*comma-separated",
    ),
    "non_numeric_over_threshold": (
        {"data.csv": _bad_share_csv()},
        r"FILE: column 'x' is numeric but 5 of 100 values are not numbers \(the first in row 96\), over the allowed",
    ),
    "single_class": (
        {"data.csv": b"x,target\n1,yes\n2,yes\n3,\n"},
        r"RAW: target column 'target' has a single class \['yes'\]",
    ),
    "target_without_values": ({"data.csv": b"x,target\n1,\n2,\n"}, r"FILE: target column 'target' has no values"),
    "truncated_parquet": ({"data.parquet": _truncated_parquet()}, r"FILE: not a readable Parquet file"),
    "corrupt_parquet": ({"data.parquet": b"PAR1" + b"\0" * 64}, r"FILE: not a readable Parquet file"),
    "ragged_csv": ({"data.csv": b"x,target\n1,a\n2,b,extra\n"}, r"FILE: not a readable CSV file"),
    "unclosed_quote": (
        {"data.csv": b'x,target\n1,"a\n2,b\n3,a\n'},
        r"FILE: column 'target', data row 1: a value spans several lines \(an unclosed quote",
    ),
    "line_break_in_a_quoted_value": (
        {"data.csv": b'x,target\n1,a\n2,"b\r\nc"\n3,a\n'},
        r"FILE: column 'target', data row 2: a value spans several lines",
    ),
    "not_utf8": ({"data.csv": b"x,target\n1,caf\xe9\n2,b\n"}, r"FILE: .*column 'target'.*not UTF-8"),
    "no_data_files": ({"notes.txt": b"hello"}, r"RAW: no CSV or Parquet object found"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_leaves_nothing(area: Area, case: str) -> None:
    files, pattern = BAD_INPUTS[case]
    for name, body in files.items():
        file_uri = area.put(name, body)
    expected = pattern.replace("FILE", _re(file_uri)).replace("RAW", _re(area.raw_prefix))
    with pytest.raises(DataError, match=expected):
        area.ingest()
    assert area.lake_listing() == []


def test_a_100_mb_row_is_refused_by_name_and_leaves_nothing(area: Area) -> None:
    # A single 100 MB field: one JVM string in Spark, useless as a feature; usually an unclosed quote upstream.
    body = b"x,text,target\n1,short,a\n2," + b"y" * (100 * 1024**2) + b",b\n3,short,a\n"
    source = area.put("huge-row.csv", body)
    del body
    limit = MAX_ROW_BYTES // 1024**2
    with pytest.raises(DataError, match=rf"{_re(source)}: a row is longer than {limit} MiB, the limit for one CSV row"):
        area.ingest()
    assert area.lake_listing() == []


def test_a_row_under_the_limit_is_kept_whole(area: Area) -> None:
    # Longer than pyarrow's default 1 MiB parse block, well under the limit: a long text is a value like any other.
    text = "z" * (3 * 1024**2)
    area.put("long-row.csv", f"x,text,target\n1,short,a\n2,{text},b\n3,short,a\n".encode())
    result = area.ingest()
    assert result.created and result.rows == 3
    assert area.json(result.manifest_uri)["columns"]["text"] == "categorical"


def test_second_file_with_other_columns_is_refused(area: Area) -> None:
    area.put("a.csv", b"x,cat,target\n1,a,yes\n2,b,no\n")
    area.put("b.csv", b"x,colour,target\n1,a,yes\n2,b,no\n")
    with pytest.raises(DataError, match=rf"{_re(area.raw_prefix)}b\.csv: columns differ.*\['cat', 'colour'\]"):
        area.ingest()
    assert area.lake_listing() == []


def test_non_numeric_under_threshold_are_missing_with_a_warning(area: Area) -> None:
    values = [str(i) for i in range(499)] + ["unknown"]
    source = area.put_frame("data.csv", pd.DataFrame({"x": values, "target": ["a", "b"] * 250}))
    result = area.ingest(source)
    assert result.created
    assert area.json(result.manifest_uri)["columns"]["x"] == "numeric"
    [warning] = result.warnings
    assert source in warning and "'x'" in warning and "(the first in row " in warning and "missing" in warning
    assert "unknown" not in warning, "the row of a bad value, never the value (warnings reach Kafka events)"


def test_all_null_column_is_dropped_with_a_warning(area: Area) -> None:
    source = area.put("data.csv", b"x,nothing,target\n1,,a\n2,,b\n3,,a\n")
    result = area.ingest(source)
    assert result.created
    assert area.json(result.manifest_uri)["columns"]["nothing"] == "empty"
    assert any("'nothing'" in w and "dropped" in w for w in result.warnings)


def test_inf_and_nan_are_missing_values_not_errors(area: Area) -> None:
    csv_source = area.put("data.csv", b"x,y,target\n1,inf,a\n2,NaN,b\n3,-inf,a\n4,,b\n5,2.5,a\n")
    frame = pd.DataFrame({"x": [1.0, np.inf, np.nan, 4.0], "target": ["a", "b", "a", "b"]})
    parquet_source = area.put_frame("more.parquet", frame.assign(y=[np.nan, -np.inf, 1.0, 2.0])[["x", "y", "target"]])
    result = area.ingest()
    assert result.created and result.rows == 9 and result.warnings == []
    manifest = area.json(result.manifest_uri)
    assert manifest["columns"] == {"x": "numeric", "y": "numeric", "target": "categorical"}
    assert [o["source"] for o in manifest["objects"]] == [csv_source, parquet_source]


# Schema drift against the dataset's previous snapshot


def test_schema_drift(area: Area) -> None:
    area.put("data.csv", b"x,cat,extra,target\n1,a,5,yes\n2,b,6,no\n")
    first = area.ingest()

    area.put("data.csv", b"x,cat,target\n1,a,yes\n2,b,no\n3,a,no\n")
    before = area.lake_listing()
    with pytest.raises(
        DataError,
        match=rf"{_re(area.raw_prefix)}: schema drift against snapshot "
        rf"{first.snapshot_id}.*column 'extra' disappeared.*--allow-schema-drift",
    ):
        area.ingest()
    assert area.lake_listing() == before

    area.put("data.csv", b"x,cat,extra,target\n1,a,five,yes\n2,b,six,no\n")
    with pytest.raises(DataError, match="column 'extra' changed from numeric to categorical"):
        area.ingest()
    assert area.lake_listing() == before

    area.put("data.csv", b"x,cat,target\n1,a,yes\n2,b,no\n3,a,no\n")
    accepted = area.ingest(allow_schema_drift=True)
    assert accepted.created and any("'extra' disappeared" in w for w in accepted.warnings)
    assert area.latest()["snapshot_id"] == accepted.snapshot_id

    # A new column is no error, only noted.
    area.put("data.csv", b"x,cat,new,target\n1,a,1,yes\n2,b,2,no\n")
    added = area.ingest()
    assert added.created and any("new column 'new'" in w for w in added.warnings)


# A failure while copying removes the partial snapshot


def test_failed_copy_leaves_no_partial_snapshot(area: Area, monkeypatch: pytest.MonkeyPatch) -> None:
    area.put_frame("a.csv", small_frame(50, seed=5))
    area.put_frame("b.csv", small_frame(50, seed=6))
    real_client = area.client

    class FailingSecondCopy:
        copies = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(real_client, name)

        def copy(self, *args: Any, **kwargs: Any) -> None:
            FailingSecondCopy.copies += 1
            if FailingSecondCopy.copies == 2:
                raise ConnectionError("simulated failure during the copy")
            real_client.copy(*args, **kwargs)

    monkeypatch.setattr(ml.clients, "s3_client", lambda s3: FailingSecondCopy())
    with pytest.raises(ConnectionError):
        area.ingest()
    assert FailingSecondCopy.copies == 2
    assert area.lake_listing() == []
    monkeypatch.undo()
    assert area.ingest().created


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_object_changed_after_listing_is_not_snapshotted(area: Area, monkeypatch: pytest.MonkeyPatch) -> None:
    area.put_frame("a.csv", small_frame(50, seed=7))
    listed = snapshot.source_objects

    def stale_listing(raw: S3Uri, client: Any) -> list[dict[str, Any]]:
        # as if the object had been overwritten between the listing and the read
        return [{**obj, "ETag": '"0123456789abcdef0123456789abcdef"'} for obj in listed(raw, client)]

    monkeypatch.setattr(snapshot, "source_objects", stale_listing)
    with pytest.raises(RuntimeError, match=rf"{_re(area.raw_prefix)}a\.csv changed while it was being ingested"):
        area.ingest()
    assert area.lake_listing() == []
