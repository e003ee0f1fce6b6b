"""How the stack runs a long-lived service: a plain process in its own process group (so that stopping it stops its
children too), its pid in `<stack>/run/NAME.pid`, its output in `<stack>/logs/NAME.log`, started only when its ports
are free and waited for until it answers a real request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack.config import StackPaths


class StackError(RuntimeError):
    """A service could not be prepared, started or reached; the message says which and where to look."""


@dataclass
class Service:
    """One process of the local stack."""

    name: str
    port: int
    command: Callable[[StackPaths, dict[str, str]], list[str]]
    is_healthy: Callable[[dict[str, str]], bool]
    prepare: Callable[[StackPaths, dict[str, str]], None] = lambda paths, env: None
    start_timeout_s: float = 90.0
    extra_ports: tuple[int, ...] = field(default_factory=tuple)
    url: str = ""
    # PostgreSQL's SIGTERM waits for every client to leave ("smart" shutdown); SIGINT is its fast, clean one.
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def ports(self) -> tuple[int, ...]:
        """The ports it listens on (0: none of its own)."""
        return tuple(port for port in (self.port, *self.extra_ports) if port)

    def pid_file(self, paths: StackPaths) -> Path:
        return paths.run / f"{self.name}.pid"

    def log_file(self, paths: StackPaths) -> Path:
        return paths.logs / f"{self.name}.log"

    def running_pid(self, paths: StackPaths) -> int | None:
        """The pid this stack started for the service, if that process is still alive."""
        pid_file = self.pid_file(paths)
        if not pid_file.exists():
            return None
        pid = int(pid_file.read_text().strip() or 0)
        if pid <= 0 or not _process_alive(pid):
            return None
        return pid

    def start(self, paths: StackPaths, env: dict[str, str]) -> str:
        """Start the service unless it already runs; wait until it is healthy. Returns what happened."""
        if self.running_pid(paths) is not None and self.is_healthy(env):
            return "already running"
        if self.running_pid(paths) is None:
            for port in self.ports:
                if port_in_use(port):
                    raise StackError(
                        f"{self.name}: port 127.0.0.1:{port} is taken by a process this stack did not start "
                        f"(find it with `ss -ltnp 'sport = :{port}'`), so {self.name} cannot start"
                    )
            paths.logs.mkdir(parents=True, exist_ok=True)
            paths.run.mkdir(parents=True, exist_ok=True)
            env = dict(env)  # what prepare() adds is for this service's process only
            self.prepare(paths, env)
            log = self.log_file(paths).open("ab")
            process = subprocess.Popen(
                self.command(paths, env),
                env=env,
                cwd=paths.data,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.pid_file(paths).write_text(str(process.pid))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.running_pid(paths) is None:
                raise StackError(f"{self.name} exited during start-up; its log is {self.log_file(paths)}")
            if self.is_healthy(env):
                return "started"
            time.sleep(0.5)
        raise StackError(
            f"{self.name} did not become healthy within {self.start_timeout_s:.0f} s on port {self.port}; "
            f"its log is {self.log_file(paths)}"
        )

    def stop(self, paths: StackPaths, timeout_s: float = 30.0) -> str:
        """Stop the process group this stack started for the service and wait until its ports are free."""
        pid = self.running_pid(paths)
        self.pid_file(paths).unlink(missing_ok=True)
        if pid is None:
            return "not running"
        signal_group(pid, self.stop_signal)
        if not wait_until(lambda: not group_alive(pid), timeout_s):
            signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not group_alive(pid), 10.0)
        for port in self.ports:
            wait_until(lambda p=port: not port_in_use(p), 10.0)  # type: ignore[misc]
        return "stopped"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. The leader is reaped first when it is this process's own child
    (a test or the demo started the service here): an exited but unreaped leader would keep the group alive."""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child, or reaped already
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def java() -> str:
    """The Java of $JAVA_HOME, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else "java"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll `predicate` until it is true or the time is up; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def http_ok(url: str, accept_statuses: tuple[int, ...] = (200,)) -> bool:
    """Whether an HTTP GET of url answers with one of the accepted statuses."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local health URLs only
            return int(response.status) in accept_statuses
    except urllib.error.HTTPError as error:
        return error.code in accept_statuses
    except (urllib.error.URLError, OSError):
        return False
