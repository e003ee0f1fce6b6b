"""One request to a Hive metastore over Thrift (binary protocol, buffered transport: the metastore's defaults), to tell
a metastore that serves from one that only accepts connections: with its database (PostgreSQL) down, the metastore
still listens, and a Spark job would find out minutes later through the Hive client's retries.

The request is `get_all_databases()`, which reads the metastore's database. Written by hand (a dozen bytes each way)
rather than adding a Thrift client library for one call."""

from __future__ import annotations

import socket
import struct

_VERSION_1 = 0x80010000
_CALL, _REPLY, _EXCEPTION = 1, 2, 3
_STOP, _STRING, _STRUCT, _LIST = 0, 11, 12, 15
_METHOD = b"get_all_databases"


class MetastoreError(RuntimeError):
    """The metastore answered, but with an error (its MetaException's message, or a Thrift application error)."""


def _request(seqid: int) -> bytes:
    # message header (strict binary protocol), then the argument struct: no fields, only STOP
    return struct.pack(">Ii", _VERSION_1 | _CALL, len(_METHOD)) + _METHOD + struct.pack(">ib", seqid, _STOP)


class _Reader:
    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection

    def take(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.connection.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the metastore closed the connection before answering")
            data += chunk
        return data

    def i32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def string(self) -> str:
        return self.take(self.i32()).decode("utf-8", "replace")

    def field_header(self) -> tuple[int, int]:
        kind = self.take(1)[0]
        return (kind, 0) if kind == _STOP else (kind, int(struct.unpack(">h", self.take(2))[0]))

    def first_string_field(self) -> str:
        """The first string field of a struct (a MetaException's or TApplicationException's message)."""
        message = ""
        while True:
            kind, _ = self.field_header()
            if kind == _STOP:
                return message
            if kind != _STRING:
                raise ValueError(f"unexpected Thrift field type {kind} in an error")
            message = message or self.string()


def get_all_databases(host: str, port: int, timeout_s: float) -> list[str]:
    """The metastore's database names; MetastoreError when it answers with an error, OSError when it does not
    answer in time (socket.timeout) or at all."""
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.settimeout(timeout_s)
        connection.sendall(_request(seqid=1))
        reader = _Reader(connection)
        header = int(struct.unpack(">I", reader.take(4))[0])
        if header & 0xFFFF0000 != _VERSION_1:
            raise ValueError(f"not a Thrift binary-protocol answer (header {header:#x})")
        reader.string()  # the method name
        reader.i32()  # seqid
        if header & 0xFF == _EXCEPTION:
            raise MetastoreError(reader.first_string_field())
        kind, field = reader.field_header()
        if kind == _LIST and field == 0:
            element, size = reader.take(1)[0], reader.i32()
            if element != _STRING:
                raise ValueError(f"unexpected Thrift list element type {element}")
            return [reader.string() for _ in range(size)]
        if kind == _STRUCT and field == 1:  # o1: MetaException
            raise MetastoreError(reader.first_string_field())
        raise ValueError(f"unexpected get_all_databases answer (field {field}, type {kind})")
