"""Helpers of the events tests: reading a test topic back, and a relay that plays a broker coming back."""

from __future__ import annotations

import threading
import time
from typing import Any

from ml.events.consumer import open_topic
from ml.settings import KafkaSettings
from tests.support.probes import free_port


def read_all(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """The topic's records from its beginning, once `expected` of them arrived (a bounded poll)."""
    consumer = open_topic(kafka, topic, from_beginning=True)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


class Relay:
    """A TCP relay on a free port to the shared broker, that can be switched on later (the broker 'comes back')."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: Any = None

    def start(self) -> None:
        import socket

        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _accept(self, server: Any) -> None:
        import socket

        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
