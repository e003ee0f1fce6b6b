"""Small probes the integration tests share: a free local port, an HTTP JSON call, and a bounded poll for an
observable condition (never a sleep to let time pass)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

SHARED_PORTS = frozenset({5000, 8000, 8080, 9000, 9001, 9092, 9093})  # the shared stack's: never a test's


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the kernel's pick), never one of the shared stack's."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in SHARED_PORTS:
            return port


def http(
    method: str, url: str, body: Any = None, raw: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request (`raw` sent as is, else `body` as JSON); an HTTP error status is
    returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0, poll_s: float = 0.3) -> None:
    """Poll `condition` until it holds; an AssertionError naming `what` after `timeout_s` (a bound, not a wait)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(poll_s)
