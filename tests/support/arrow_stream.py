"""Arrow IPC request bodies as a client builds them for /predict (ml.serve.arrow_body), for the tests and B8."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa


def arrow_stream(rows: pa.Table | Sequence[Mapping[str, Any]], *, chunk: int | None = None, **options: Any) -> bytes:
    """`rows` (a table, or dicts as a JSON body holds them) as an IPC stream of record batches of at most `chunk` rows;
    `options` are pyarrow's IpcWriteOptions (compression="zstd", say)."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table, max_chunksize=chunk)
    return bytes(sink.getvalue().to_pybytes())
