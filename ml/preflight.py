"""Before a task starts its work: the services it needs can serve it, or it fails at once naming the service and its
address. A client library's own retries would otherwise spend minutes and then report only that they gave up (MLflow's
client retries a 503 for about four minutes and drops the server's message)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

from ml.settings import MlflowSettings


class ServiceUnavailable(RuntimeError):
    """A service a task needs is unreachable or cannot serve requests; the message names it and its address."""


def require_mlflow(mlflow: MlflowSettings, timeout_s: float = 10.0) -> None:
    """One request to the MLflow server that reads its backend store (a search for one experiment), without retries:
    a server that is down, or whose database is down (MLflow answers 503 TEMPORARILY_UNAVAILABLE then), raises
    ServiceUnavailable with the server's own explanation."""
    url = f"{mlflow.tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url)  # noqa: S310 - the configured MLflow server's URL
    if mlflow.username:
        login = base64.b64encode(f"{mlflow.username}:{mlflow.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {login}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 - the configured MLflow server's URL
            return
    except urllib.error.HTTPError as error:
        reason = _mlflow_error(error)
        if error.code in (401, 403):
            who = f"the login of user {mlflow.username!r}" if mlflow.username else "a client without a login"
            raise ServiceUnavailable(
                f"the MLflow server at {mlflow.tracking_uri} refused {who} (HTTP {error.code}: {reason}); check the "
                "connection's login and password"
            ) from None
        raise ServiceUnavailable(
            f"the MLflow server at {mlflow.tracking_uri} cannot serve requests (HTTP {error.code}: {reason})"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        cause = error.reason if isinstance(error, urllib.error.URLError) else error
        raise ServiceUnavailable(f"the MLflow server at {mlflow.tracking_uri} is not reachable ({cause})") from None


def _mlflow_error(error: urllib.error.HTTPError) -> str:
    """MLflow's error code and message from an error answer (its JSON body), or the start of the body."""
    body = error.read(4096).decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
        return f"{parsed.get('error_code', '?')}: {parsed.get('message', '')}"[:1000]
    except ValueError:
        return body[:1000] or str(error.reason)
