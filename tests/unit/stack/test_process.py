"""stack/process.py: a Service's life cycle (start, health, pid file, stop, a port someone else holds) on a small
HTTP server started for the test on a free port, never on the shared stack; which ports a Service claims; the signal
`stop` sends (faked, and once on a `sleep` this test starts itself)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stack.process
import stack.services
from stack.config import StackPaths
from stack.process import Service, StackError, http_ok, port_in_use
from tests.support.probes import free_port

NO_SUCH_PID = 4_242_424  # above Linux's largest pid_max (2**22): never a real process


def _http_service(port: int, command: list[str] | None = None) -> Service:
    return Service(
        name="unit-http",
        port=port,
        command=lambda paths, env: command or [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        is_healthy=lambda env: http_ok(f"http://127.0.0.1:{port}/"),
        start_timeout_s=60,
        url=f"http://127.0.0.1:{port}",
    )


def _portless(name: str = "unit-portless", **changes: Any) -> Service:
    return Service(name=name, port=0, command=lambda paths, env: [], is_healthy=lambda env: True, **changes)


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[StackPaths]:
    paths = StackPaths(tmp_path)
    paths.data.mkdir(parents=True)
    yield paths


# --- a Service's life cycle -------------------------------------------------------------------------------------------


def test_a_service_starts_once_is_found_again_and_stops(paths: StackPaths) -> None:
    port = free_port()
    service = _http_service(port)
    try:
        assert service.start(paths, {}) == "started"
        pid = service.running_pid(paths)
        assert pid is not None and service.pid_file(paths).read_text() == str(pid)
        assert service.start(paths, {}) == "already running"
        assert service.running_pid(paths) == pid
    finally:
        assert service.stop(paths) == "stopped"
    assert service.running_pid(paths) is None and not service.pid_file(paths).exists()
    assert not port_in_use(port)
    assert service.stop(paths) == "not running"
    assert service.log_file(paths).exists(), "its output went to its log file"


def test_a_service_that_exits_during_start_up_names_its_log(paths: StackPaths) -> None:
    service = _http_service(free_port(), [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(StackError, match=r"exited during start-up; its log is .*unit-http\.log"):
        service.start(paths, {})


def test_a_port_held_by_another_process_is_reported_not_taken(paths: StackPaths) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is taken by a process this stack did not start"):
            _http_service(port).start(paths, {})
    assert not _http_service(port).pid_file(paths).exists()


def test_the_services_module_re_exports_the_machinery() -> None:
    # The stack's callers import these from stack.services; they must be the very objects stack.process defines.
    for name in ("Service", "StackError", "group_alive", "http_ok", "port_in_use", "signal_group", "wait_until"):
        assert getattr(stack.services, name) is getattr(stack.process, name), name


# --- ports and pid files ----------------------------------------------------------------------------------------------


def test_ports_lists_the_main_and_extra_ports_and_skips_zero() -> None:
    assert _http_service(5001).ports == (5001,)
    assert Service("a", 7077, lambda p, e: [], lambda e: True, extra_ports=(8090,)).ports == (7077, 8090)
    assert _portless().ports == ()
    assert _portless(extra_ports=(0, 8265, 0)).ports == (8265,)


def test_running_pid_is_none_without_a_live_process(paths: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _portless()
    assert service.running_pid(paths) is None, "no pid file"
    paths.run.mkdir(parents=True)
    service.pid_file(paths).write_text("")
    assert service.running_pid(paths) is None, "an empty pid file"
    service.pid_file(paths).write_text(str(NO_SUCH_PID))
    assert service.running_pid(paths) is None, "a pid no process has"
    monkeypatch.setattr(stack.process, "_process_alive", lambda pid: pid == NO_SUCH_PID)
    assert service.running_pid(paths) == NO_SUCH_PID


# --- stopping: the signal sent ----------------------------------------------------------------------------------------


class _FakeGroups:
    """os.killpg for one process group: records what was sent; the group ends at the first signal in `ends_on`."""

    def __init__(self, ends_on: tuple[int, ...]) -> None:
        self.ends_on = ends_on
        self.sent: list[tuple[int, int]] = []
        self.alive = True

    def killpg(self, pgid: int, sig: int) -> None:
        assert pgid == NO_SUCH_PID, f"a signal for a group this test did not fake: {pgid}"
        if sig == 0:
            if not self.alive:
                raise ProcessLookupError(pgid)
            return
        self.sent.append((pgid, sig))
        if sig in self.ends_on:
            self.alive = False


@pytest.fixture
def fake_group(paths: StackPaths, monkeypatch: pytest.MonkeyPatch) -> _FakeGroups:
    paths.run.mkdir(parents=True)
    monkeypatch.setattr(stack.process, "_process_alive", lambda pid: pid == NO_SUCH_PID)
    groups = _FakeGroups(ends_on=(signal.SIGTERM, signal.SIGINT, signal.SIGKILL))
    monkeypatch.setattr(os, "killpg", groups.killpg)
    return groups


def test_stop_sends_sigterm_by_default(paths: StackPaths, fake_group: _FakeGroups) -> None:
    service = _portless()
    service.pid_file(paths).write_text(str(NO_SUCH_PID))
    assert service.stop(paths, timeout_s=5) == "stopped"
    assert fake_group.sent == [(NO_SUCH_PID, signal.SIGTERM)]
    assert not service.pid_file(paths).exists()


def test_stop_sends_the_services_stop_signal(paths: StackPaths, fake_group: _FakeGroups) -> None:
    service = _portless(stop_signal=signal.SIGINT)
    service.pid_file(paths).write_text(str(NO_SUCH_PID))
    assert service.stop(paths, timeout_s=5) == "stopped"
    assert fake_group.sent == [(NO_SUCH_PID, signal.SIGINT)], "PostgreSQL's fast shutdown is SIGINT, not SIGTERM"


def test_a_group_that_outlives_its_stop_signal_is_killed(paths: StackPaths, fake_group: _FakeGroups) -> None:
    fake_group.ends_on = (signal.SIGKILL,)
    service = _portless(stop_signal=signal.SIGINT)
    service.pid_file(paths).write_text(str(NO_SUCH_PID))
    assert service.stop(paths, timeout_s=0) == "stopped"
    assert fake_group.sent == [(NO_SUCH_PID, signal.SIGINT), (NO_SUCH_PID, signal.SIGKILL)]


def test_stop_ends_a_real_process_group_with_its_stop_signal(
    paths: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `sleep` this test starts in a session of its own, as Service.start does, stopped by SIGINT: it ends by
    SIGINT, not by the SIGKILL that follows a stop signal that did not work."""

    def default_sigint() -> None:  # a test runner may run with SIGINT ignored, which a child would inherit
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    child = subprocess.Popen(["sleep", "30"], start_new_session=True, preexec_fn=default_sigint)
    try:
        # group_alive reaps its own child; keep the status it reaps so that the test can read how the child ended.
        statuses: dict[int, int] = {}
        real_waitpid = os.waitpid

        def recording_waitpid(pid: int, options: int) -> tuple[int, int]:
            found, status = real_waitpid(pid, options)
            if found == child.pid:
                statuses[found] = status
            return found, status

        monkeypatch.setattr(os, "waitpid", recording_waitpid)
        service = _portless("unit-sleep", stop_signal=signal.SIGINT)
        paths.run.mkdir(parents=True)
        service.pid_file(paths).write_text(str(child.pid))
        assert service.running_pid(paths) == child.pid
        assert service.stop(paths, timeout_s=10) == "stopped"
        returncode = os.waitstatus_to_exitcode(statuses[child.pid]) if child.pid in statuses else child.wait(5)
        assert returncode == -signal.SIGINT
        assert not stack.process.group_alive(child.pid)
    finally:
        if child.poll() is None and child.pid not in statuses:
            child.kill()
            child.wait(5)
