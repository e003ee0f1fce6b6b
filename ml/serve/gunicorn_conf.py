"""gunicorn's configuration for the prediction service (`gunicorn -c python:ml.serve.gunicorn_conf ...`, as
`python -m ml serve` runs it): Prometheus' multiprocess mode needs to know when a worker is gone.

With PROMETHEUS_MULTIPROC_DIR set, every worker writes its metrics to files there (ml.serve.prometheus). When one
exits, `child_exit` (run in gunicorn's master) marks it dead: its live gauges (the Kafka buffer's pending messages)
leave the sums, while its counters stay in them, so totals never go back when gunicorn replaces a worker.
"""

from __future__ import annotations

import os
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook, in the master, after a worker exited."""
    # The entry point's environment (gunicorn's master): without the directory there is nothing to mark.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)
