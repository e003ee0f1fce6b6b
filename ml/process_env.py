"""Writing this process's environment: only where a library reads a setting from nowhere else.

Two cases, both documented in docs/ARCHITECTURE.md: Ray 2.60 reads its auth mode and token only from the
environment (RAY_AUTH_MODE through RayConfig, RAY_AUTH_TOKEN through the C++ AuthenticationTokenLoader;
`_system_config` refuses AUTH_MODE), and so does Ray Tune for the AWS keys it copies into trials (ml.tune.runtime);
MLflow's client reads its login only from MLFLOW_TRACKING_USERNAME/PASSWORD (ml.clients.use_mlflow_login).
Everything else in `ml` takes its configuration as arguments.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


def apply_to_environment(values: Mapping[str, str | None]) -> None:
    """Set these variables of this process (None or empty: unset)."""
    for key, value in values.items():
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)


@contextmanager
def scoped_environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`apply_to_environment` for the block, then what was there before is put back."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        apply_to_environment(values)
        yield
    finally:
        apply_to_environment(saved)
