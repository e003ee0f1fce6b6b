"""ml.tune.runtime against a real Ray: the local Ray a task starts runs its work and refuses anyone without its token,
and its workers' output reaches the driver through logging, not on the driver's stderr.

Ray's servers listen on every interface (it replaces a loopback node address with the routable one on purpose), so
the token a local Ray gets from ml.tune.runtime is what keeps other users of the machine from submitting work to it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[4]

OWNER = textwrap.dedent(
    """
    import sys

    import ray

    from ml.settings import RaySettings, S3Settings
    from ml.tune.runtime import ensure_ray

    ensure_ray(RaySettings(), S3Settings(access_key_id="id", secret_access_key="sk"))
    print(ray.get_runtime_context().gcs_address, flush=True)
    print(ray.get(ray.remote(lambda: "a task ran on the owner's Ray").remote()), flush=True)
    sys.stdin.read()  # hold the Ray until the test closes stdin
    """
)

INTRUDER = textwrap.dedent(
    """
    import sys

    import ray

    try:
        ray.init(address=sys.argv[1])
        print("CONNECTED", ray.get(ray.remote(lambda: 42).remote()))
    except Exception as error:
        print("REFUSED", type(error).__name__, error)
    """
)

SPEAKER = textwrap.dedent(
    """
    import logging
    import sys
    import threading

    import ray

    from ml.settings import RaySettings, S3Settings
    from ml.tune.runtime import ensure_ray

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    both_arrived = threading.Event()
    seen = []

    class Arrivals(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
            if any("to stdout" in m for m in seen) and any("to stderr" in m for m in seen):
                both_arrived.set()

    logging.getLogger("ml.tune.workers").addHandler(Arrivals())

    @ray.remote
    def speak():
        print("a worker line to stdout", flush=True)
        print("a worker line to stderr", file=sys.stderr, flush=True)

    ensure_ray(RaySettings(), S3Settings(access_key_id="id", secret_access_key="sk"))
    ray.get(speak.remote())
    print("ARRIVED" if both_arrived.wait(timeout=60) else "NOT ARRIVED", flush=True)
    ray.shutdown()
    """
)


def test_the_workers_output_reaches_the_driver_through_logging(tmp_path: Path) -> None:
    """Under Airflow a line on the task's stderr is an ERROR: a worker's stderr is logged at WARNING instead."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(PROJECT_ROOT))
    speaker = subprocess.run(
        [sys.executable, "-c", SPEAKER], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert speaker.returncode == 0, speaker.stderr[-3000:]
    lines = speaker.stdout.splitlines()
    assert "ARRIVED" in lines, speaker.stdout[-3000:]
    assert any(
        line.startswith("INFO ml.tune.workers (speak ") and line.endswith(") a worker line to stdout") for line in lines
    ), lines
    assert any(
        line.startswith("WARNING ml.tune.workers (speak ") and line.endswith(") a worker line to stderr")
        for line in lines
    ), lines
    assert "a worker line to stderr" not in speaker.stderr, speaker.stderr[-3000:]


def test_a_local_ray_refuses_a_driver_without_its_token(tmp_path: Path) -> None:
    # a clean HOME: no ~/.ray/auth_token of this machine to fall back on; no RAY_ variable from the test's process
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(PROJECT_ROOT))
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        address = owner.stdout.readline().strip()
        assert address, "the owner's local Ray did not start"
        assert owner.stdout.readline().strip() == "a task ran on the owner's Ray", "its own workers have the token"
        # no token at all, or a made-up one
        for auth in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2}):
            intruder = subprocess.run(
                [sys.executable, "-c", INTRUDER, address],
                env={**env, **auth},
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            output = intruder.stdout + intruder.stderr
            assert "CONNECTED" not in output, output[-2000:]
            assert "REFUSED" in intruder.stdout and "InvalidAuthToken" in output, output[-2000:]
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        try:
            owner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(owner.pid, 9)
            owner.wait()
