"""Registers the project's pieces with Airflow: the 'Tuning report' operator link, and the pages served by the API
server under /mlops (a FastAPI app): the tuning report of a DAG run (reached through the operator link: it needs a
run id) and the monitoring page (ml.monitoring), linked from the navigation bar's Browse menu.

The pages are behind Airflow's own login and authorization: the caller's token (the UI's session cookie or a Bearer
header, as for Airflow's REST API) must allow reading the DAG's runs (the monitoring page: mlops_training's). At most
two pages are built at a time, each from a bounded number of MLflow queries (ml.report) or a bounded read of two
Kafka topics (ml.monitoring).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Request  # by name from this module's globals: FastAPI resolves the string annotations here

from mlops_airflow.operators import TuningReportLink

REPORTED_DAG = "mlops_training"
MONITORING_MAX_HOURS = 48  # ml.monitoring.MAX_HOURS (not imported: the plugin loads without ml's modules)


async def require_dag_run_reader(request: Request, dag_id: str | None = None) -> None:
    """Airflow's authentication and authorization for a page about `dag_id`'s runs (401 without a valid token, 403
    without access), with Airflow's own dependencies, imported when a request comes, not when the plugin loads.
    Without `dag_id`, the request's `dag_id` parameter names the DAG (REPORTED_DAG when it has none)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_dag

    user = await get_user(request, None, await bearer_scheme(request))
    dag_id = dag_id or request.query_params.get("dag_id") or REPORTED_DAG  # the page's default, not "any DAG"
    requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id)(request, user)


def _report_app() -> Any:
    import asyncio
    import threading

    from fastapi import Depends, FastAPI, Query
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="MLOps tuning reports")
    builders = threading.BoundedSemaphore(2)  # page builds at once: each holds a thread and MLflow or Kafka reads

    async def authorized(request: Request) -> None:
        await require_dag_run_reader(request)

    async def monitoring_reader(request: Request) -> None:
        # Always the training DAG: a `dag_id` parameter must not let the reader of another DAG in.
        await require_dag_run_reader(request, REPORTED_DAG)

    @app.get("/tuning-report", response_class=HTMLResponse, dependencies=[Depends(authorized)])
    async def tuning_report(run_id: str = Query(...), dag_id: str = Query(REPORTED_DAG)) -> HTMLResponse:
        from ml.report import collect_trials, render_report
        from mlops_airflow.hooks import MlflowHook

        def build() -> str:
            with builders:
                parent, trials = collect_trials(MlflowHook().client, run_id)
                metric = (parent or {}).get("tags", {}).get("metric", "val_loss")
                return render_report(f"Tuning report: {dag_id} / {run_id}", parent, trials, metric)

        # MLflow's client is synchronous: keep it off the API server's event loop.
        return HTMLResponse(await asyncio.to_thread(build))

    @app.get("/monitoring", response_class=HTMLResponse, dependencies=[Depends(monitoring_reader)])
    async def monitoring(
        model: str | None = Query(None, max_length=250), hours: int = Query(6, ge=1, le=MONITORING_MAX_HOURS)
    ) -> HTMLResponse:
        from ml.monitoring import monitoring_page
        from mlops_airflow.hooks import KafkaEventsHook

        def build() -> str:
            with builders:
                return monitoring_page(KafkaEventsHook().settings, model=model or None, hours=hours)

        # kafka-python is synchronous (and the reading waits up to its deadline): off the event loop.
        return HTMLResponse(await asyncio.to_thread(build))

    return app


class MlopsPlugin(AirflowPlugin):
    name = "mlops_airflow"
    operator_extra_links = [TuningReportLink()]  # noqa: RUF012 - Airflow reads these class attributes
    fastapi_apps = [{"app": _report_app(), "url_prefix": "/mlops", "name": "MLOps tuning reports"}]  # noqa: RUF012
    # The monitoring page in the UI's Browse menu, framed at /plugin/mlops-monitoring (the frame is the API server's
    # own origin, so the session cookie goes with it). The tuning report has no such entry: it needs a run id, and
    # the operator link gives it.
    external_views = [  # noqa: RUF012
        {
            "name": "Model monitoring",
            "href": "/mlops/monitoring",
            "destination": "nav",
            "category": "browse",
            "url_route": "mlops-monitoring",
        }
    ]
