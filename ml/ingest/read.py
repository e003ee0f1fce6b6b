"""The source side of an ingest: which objects, their content hash, and one object parsed with pyarrow."""

from __future__ import annotations

import hashlib
import io
import zlib
from typing import Any

from ml.storage import DataError, S3Uri, list_keys

SUPPORTED = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
# The longest CSV row accepted (pyarrow's parse block; its default of 1 MiB refuses long texts). A longer row is
# almost always a broken file (an unclosed quote swallows the rest of it), and Spark would hold it in one value.
MAX_ROW_BYTES = 16 * 1024**2
# One object is read whole into the worker's memory, and a gzipped one decompressed there: bounds that keep a worker
# alive whatever the raw bucket holds (a gzip bomb of a few MB expands to terabytes). Larger data: split it into
# several objects (ingest reads them in parallel) or keep it as Parquet.
MAX_OBJECT_BYTES = 2 * 1024**3
MAX_DECOMPRESSED_BYTES = 4 * 1024**3
_GUNZIP_STEP = 64 * 1024**2


def format_of(key: str) -> str | None:
    return next((fmt for suffix, fmt in SUPPORTED.items() if key.lower().endswith(suffix)), None)


def source_objects(raw: S3Uri, client: Any) -> list[dict[str, Any]]:
    """The CSV/Parquet objects at a key or under a prefix, sorted by key."""
    prefix = raw.key.rstrip("/") + "/"
    listed = [
        obj
        for obj in list_keys(raw, client)
        if not raw.key or obj["Key"] in (raw.key,) or obj["Key"].startswith(prefix)
    ]
    objects = [obj for obj in listed if format_of(obj["Key"]) and obj["Size"] > 0]
    empty = [obj["Key"] for obj in listed if format_of(obj["Key"]) and obj["Size"] == 0]
    if empty:
        raise DataError(f"s3://{raw.bucket}/{empty[0]}: the file is empty (0 bytes)")
    large = [obj for obj in objects if obj["Size"] > MAX_OBJECT_BYTES]
    if large:
        raise DataError(
            f"s3://{raw.bucket}/{large[0]['Key']}: {large[0]['Size']} bytes, over the limit of "
            f"{MAX_OBJECT_BYTES // 1024**3} GiB for one object: split it into several objects under the prefix"
        )
    if not objects:
        raise DataError(f"{raw}: no CSV or Parquet object found (looked for {', '.join(SUPPORTED)})")
    return sorted(objects, key=lambda obj: obj["Key"])


def content_hash(raw: S3Uri, objects: list[dict[str, Any]], target: str = "", task: str | None = None) -> str:
    """A stable id for the objects' content (their names relative to the source, ETags and sizes) and for what the
    snapshot is for (the target, and the task when one is given rather than inferred)."""
    digest = hashlib.sha256()
    if target or task:
        digest.update(f"target\0{target}\0task\0{task or ''}\n".encode())
    for obj in objects:
        relative = obj["Key"][len(raw.key) :].lstrip("/") or obj["Key"].rsplit("/", 1)[-1]
        digest.update(f"{relative}\0{obj['ETag'].strip(chr(34))}\0{obj['Size']}\n".encode())
    return digest.hexdigest()[:16]


def gunzip_bounded(body: bytes, where: str, limit: int | None = None) -> bytes:
    """Decompress gzip data (several members too, as `gzip.decompress` does), step by step, and stop with a DataError
    as soon as the output passes `limit` (default MAX_DECOMPRESSED_BYTES): a bomb never gets the memory it asks for."""
    limit = MAX_DECOMPRESSED_BYTES if limit is None else limit
    out = bytearray()
    remaining = body
    while remaining:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = remaining
        while data and not inflater.eof:
            out += inflater.decompress(data, _GUNZIP_STEP)
            data = inflater.unconsumed_tail
            if len(out) > limit:
                raise DataError(
                    f"{where}: decompresses to more than {limit} bytes, the limit for one object (a compression bomb, "
                    "or a file to split into several objects)"
                )
        if not inflater.eof:
            raise DataError(f"{where}: not a readable CSV file (the gzip data ends early)")
        remaining = inflater.unused_data.lstrip(b"\0")  # the next member, if any (trailing zero padding is allowed)
    return bytes(out)


def read_table(body: bytes, fmt: str, where: str) -> Any:
    """Parse one object with pyarrow; errors name the object."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kind = "Parquet" if fmt == "parquet" else "CSV"
    try:
        if fmt == "parquet":
            return pq.read_table(io.BytesIO(body))
        if where.lower().endswith(".gz"):
            body = gunzip_bounded(body, where)
        table = pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(block_size=MAX_ROW_BYTES),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as error:
        if "straddling" in str(error):  # pyarrow's words for a row longer than its parse block
            raise DataError(
                f"{where}: a row is longer than {MAX_ROW_BYTES // 1024**2} MiB, the limit for one CSV "
                "row (an unclosed quote, or a text that does not belong in a feature table)"
            ) from None
        raise DataError(f"{where}: not a readable {kind} file ({error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not a readable {kind} file: not UTF-8 text ({error})") from None
    # pyarrow keeps values that are not valid UTF-8 as bytes; Spark would read them as mangled text.
    binary = [field.name for field in table.schema if pa.types.is_binary(field.type)]
    if binary:
        raise DataError(
            f"{where}: not a readable {kind} file: column {binary[0]!r} holds values that are not UTF-8 text"
        )
    if b'"' in body:  # without a quote, a line break always ends a row (and the scan is a memchr, not a regex)
        _refuse_multiline_values(table, where)
    return table


def _refuse_multiline_values(table: Any, where: str) -> None:
    """pyarrow accepts a line break inside quotes (and an unclosed quote, which swallows the rest of the file into
    one value); Spark reads CSV one line per row and would split that value into broken rows: refuse it here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in table.schema:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        broken = pc.match_substring_regex(table.column(column.name), r"[\r\n]")
        if pc.any(broken).as_py():
            row = pc.index(broken, True).as_py() + 1
            raise DataError(
                f"{where}: column {column.name!r}, data row {row}: a value spans several lines (an "
                "unclosed quote, or a quoted text with line breaks); CSV rows must be one line each"
            )
