"""ml.ingest.read: which objects an ingest takes (in an in-memory S3), their content hash, and parsing one object."""

from __future__ import annotations

import gzip
import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.ingest import read
from ml.ingest.read import content_hash, format_of, read_table, source_objects
from ml.storage import DataError, S3Uri

WHERE = "s3://raw/toy/data.csv"


def csv(text: str, where: str = WHERE) -> pa.Table:
    return read_table(text.encode(), "csv", where)


# format_of


def test_formats() -> None:
    assert format_of("a/b.CSV") == "csv" and format_of("a/b.csv.gz") == "csv"
    assert format_of("a/b.parquet") == "parquet" and format_of("a/b.pq") == "parquet"
    assert format_of("a/_SUCCESS") is None and format_of("a/b.json") is None and format_of("a/b.gz") is None


# read_table


def test_csv_is_typed_and_inf_nan_are_kept_as_missing_or_non_finite() -> None:
    parsed = csv("a,b,c\n1,inf,x\n2,nan,y\n3,,\n")
    assert parsed.column("a").type == pa.int64()
    assert parsed.column("b").to_pylist()[1:] == [None, None]
    assert parsed.column("c").to_pylist() == ["x", "y", None]


def test_gzipped_csv() -> None:
    parsed = read_table(gzip.compress(b"a,y\n1,u\n2,v\n"), "csv", "s3://raw/toy/data.csv.gz")
    assert parsed.num_rows == 2


def test_a_gzip_bomb_stops_at_the_limit_without_getting_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.ingest.read

    bomb = gzip.compress(b"0" * (64 * 1024**2))  # 64 MiB of zeros in ~64 KiB
    monkeypatch.setattr(ml.ingest.read, "MAX_DECOMPRESSED_BYTES", 8 * 1024**2)
    monkeypatch.setattr(ml.ingest.read, "_GUNZIP_STEP", 1024**2)
    with pytest.raises(DataError, match=r"s3://raw/bomb\.csv\.gz: decompresses to more than 8388608 bytes"):
        read_table(bomb, "csv", "s3://raw/bomb.csv.gz")


def test_gunzip_reads_every_member_and_refuses_a_truncated_stream() -> None:
    from ml.ingest.read import gunzip_bounded

    two_members = gzip.compress(b"a,y\n1,u\n") + gzip.compress(b"2,v\n")
    assert gunzip_bounded(two_members, WHERE) == gzip.decompress(two_members) == b"a,y\n1,u\n2,v\n"
    assert gunzip_bounded(two_members, WHERE, limit=12) == b"a,y\n1,u\n2,v\n"  # exactly the limit is fine
    with pytest.raises(DataError, match="decompresses to more than 11 bytes"):
        gunzip_bounded(two_members, WHERE, limit=11)
    with pytest.raises(DataError, match="gzip data ends early"):
        gunzip_bounded(gzip.compress(b"a,y\n" * 1000)[:-20], WHERE)


def test_parquet_keeps_its_types() -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": [1.5, None], "flag": [True, False], "y": ["a", "b"]}), buffer)
    parsed = read_table(buffer.getvalue(), "parquet", "s3://raw/toy/data.parquet")
    assert parsed.schema.types == [pa.float64(), pa.bool_(), pa.string()]


def test_unreadable_files_name_the_file() -> None:
    with pytest.raises(DataError, match=r"s3://raw/x\.parquet: not a readable Parquet"):
        read_table(b"PAR1 this is no parquet", "parquet", "s3://raw/x.parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(1000))}), buffer)
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_table(buffer.getvalue()[: len(buffer.getvalue()) // 2], "parquet", "s3://raw/x.parquet")
    with pytest.raises(DataError, match=rf"{WHERE}: not a readable CSV"):
        csv("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="not a readable CSV"):
        read_table(b"a,b\n\xff\xfe,1\n", "csv", WHERE)
    with pytest.raises(DataError, match="not a readable CSV"):
        read_table(b"not gzip at all", "csv", "s3://raw/x.csv.gz")


def test_values_that_are_not_utf8_are_refused_by_column() -> None:
    with pytest.raises(DataError, match=rf"{WHERE}: .*column 'y' holds values that are not UTF-8"):
        read_table(b"x,y\n1,caf\xe9\n2,b\n", "csv", WHERE)


@pytest.mark.parametrize(
    ("body", "row"),
    [
        ('x,text\n1,a\n2,"b\nc"\n', 2),  # a quoted line break
        ('x,text\n1,"a\r\n2,b\n', 1),  # an unclosed quote swallows the rest of the file
    ],
)
def test_a_value_over_several_lines_is_refused(body: str, row: int) -> None:
    # Spark reads CSV one line per row: such a value would become broken rows.
    with pytest.raises(DataError, match=rf"{WHERE}: column 'text', data row {row}: a value spans several lines"):
        csv(body)


@pytest.mark.parametrize("body", ["x,text\r1,a\r2,b\r", "x,text\r\n1,a\n2,b\r\n", "x,text\n1,a\r\r\n2,b"])
def test_without_quotes_no_value_holds_a_line_break(body: str) -> None:
    # read_table checks for multi-line values only where the CSV has a quote: pyarrow ends a row at any line break
    table = csv(body)
    assert table.column("text").to_pylist() == ["a", "b"]


def test_row_length_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read, "MAX_ROW_BYTES", 1024**2)  # the parse block; 16 MiB in production
    long_text = "z" * (1024**2 // 2)
    kept = csv(f"x,text\n1,short\n2,{long_text}\n")
    assert kept.column("text").to_pylist() == ["short", long_text]
    with pytest.raises(DataError, match=rf"{WHERE}: a row is longer than 1 MiB, the limit for one CSV row"):
        csv(f"x,text\n1,short\n2,{'z' * (2 * 1024**2)}\n3,short\n")


def test_the_row_limit_is_well_above_pyarrows_default() -> None:
    assert read.MAX_ROW_BYTES == 16 * 1024**2


# content_hash: the snapshot id


def objects(*specs: tuple[str, str, int]) -> list[dict[str, Any]]:
    return [{"Key": key, "ETag": f'"{etag}"', "Size": size} for key, etag, size in specs]


def test_content_hash() -> None:
    raw = S3Uri.parse("s3://raw/toy/")
    base = content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y")
    assert base == content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y")
    assert len(base) == 16
    # the same files under another prefix are the same content
    moved = S3Uri.parse("s3://other/elsewhere/deeper")
    assert base == content_hash(
        moved, objects(("elsewhere/deeper/a.csv", "e1", 10), ("elsewhere/deeper/b.csv", "e2", 20)), "y"
    )
    # a prefix with or without its slash is the same source
    assert base == content_hash(
        S3Uri.parse("s3://raw/toy"), objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y"
    )
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e3", 20)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/c.csv", "e2", 20)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 21)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10)), "y")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "x")
    assert base != content_hash(raw, objects(("toy/a.csv", "e1", 10), ("toy/b.csv", "e2", 20)), "y", "regression")
    single = S3Uri.parse("s3://raw/toy/a.csv")
    assert content_hash(single, objects(("toy/a.csv", "e1", 10)), "y") == content_hash(
        S3Uri.parse("s3://raw/other/a.csv"), objects(("other/a.csv", "e1", 10)), "y"
    )


# source_objects, in an in-memory S3


def put(client: Any, key: str, body: bytes = b"x,y\n1,a\n") -> None:
    client.put_object(Bucket="raw", Key=key, Body=body)


def keys(listed: list[dict[str, Any]]) -> list[str]:
    return [obj["Key"] for obj in listed]


def test_source_objects_under_a_prefix(client: Any) -> None:
    for key in ("toy/b.parquet", "toy/a.csv", "toy/sub/c.csv.gz", "toy/README.txt", "toy2/other.csv", "top.csv"):
        put(client, key)
    expected = ["toy/a.csv", "toy/b.parquet", "toy/sub/c.csv.gz"]  # sorted; not toy2/, not the README
    assert keys(source_objects(S3Uri.parse("s3://raw/toy/"), client)) == expected
    assert keys(source_objects(S3Uri.parse("s3://raw/toy"), client)) == expected
    assert keys(source_objects(S3Uri.parse("s3://raw/toy/a.csv"), client)) == ["toy/a.csv"]
    listed = source_objects(S3Uri.parse("s3://raw/toy/a.csv"), client)[0]
    assert {"Key", "ETag", "Size"} <= set(listed)
    assert len(source_objects(S3Uri.parse("s3://raw"), client)) == 5


def test_an_object_over_the_size_limit_is_refused_before_it_is_read(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.ingest.read

    put(client, "toy/a.csv", b"a,y\n1,u\n")
    put(client, "toy/b.csv", b"a,y\n" + b"1,u\n" * 100)
    monkeypatch.setattr(ml.ingest.read, "MAX_OBJECT_BYTES", 100)
    with pytest.raises(DataError, match=r"s3://raw/toy/b\.csv: 404 bytes, over the limit .* split it"):
        source_objects(S3Uri.parse("s3://raw/toy/"), client)


def test_an_empty_data_file_is_an_error(client: Any) -> None:
    put(client, "toy/a.csv")
    put(client, "toy/b.csv", b"")
    with pytest.raises(DataError, match=r"s3://raw/toy/b\.csv: the file is empty \(0 bytes\)"):
        source_objects(S3Uri.parse("s3://raw/toy/"), client)


def test_no_data_file_is_an_error(client: Any) -> None:
    put(client, "toy/notes.txt", b"hello")
    with pytest.raises(DataError, match=r"s3://raw/toy/: no CSV or Parquet object found"):
        source_objects(S3Uri.parse("s3://raw/toy/"), client)
    with pytest.raises(DataError, match="no CSV or Parquet object found"):
        source_objects(S3Uri.parse("s3://raw/nothing-here/"), client)
