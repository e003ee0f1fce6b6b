"""A Hive metastore stand-in on 127.0.0.1 for the probe's tests: it reads one get_all_databases call and answers with
the bytes a test gives (or nothing, to time out). The answers are built here in the Thrift binary protocol."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ml.preprocess.metastore_probe import _request

_HEADER = 0x80010000


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">i", len(data)) + data


def _message(kind: int) -> bytes:
    return struct.pack(">I", _HEADER | kind) + _string("get_all_databases") + struct.pack(">i", 1)


def databases_answer(names: list[str]) -> bytes:
    items = b"".join(_string(name) for name in names)
    return _message(2) + struct.pack(">bhbi", 15, 0, 11, len(names)) + items + b"\x00"


def meta_exception_answer(text: str) -> bytes:
    # field 1 (o1) is a MetaException struct whose field 1 is its message
    return _message(2) + struct.pack(">bh", 12, 1) + struct.pack(">bh", 11, 1) + _string(text) + b"\x00" + b"\x00"


def application_exception_answer(text: str) -> bytes:
    return _message(3) + struct.pack(">bh", 11, 1) + _string(text) + b"\x00"


@contextmanager
def fake_metastore(answer: bytes | None) -> Iterator[int]:
    """A listening port; each connection that sends a request gets `answer`, then is closed (None: no answer, the
    connection held open until the test ends). Connections that send nothing (a bare TCP check) are just closed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    received: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                request = connection.recv(len(_request(1)))
                if not request:
                    continue
                received.append(request)
                if answer is None:
                    done.wait(10)  # silent until the test ends
                else:
                    connection.sendall(answer)  # then closed (b"": closed without an answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        with socket.create_connection(server.getsockname()):  # wakes the accept() the thread is blocked in
            pass
        thread.join(10)
        server.close()
    assert all(request == _request(1) for request in received), f"not a get_all_databases call: {received}"
