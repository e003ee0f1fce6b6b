"""Registers the project's pieces with Airflow: the 'Tuning report' operator link and the report pages, served by
the API server under /mlops (a FastAPI app) and linked from the navigation bar.

The report pages are behind Airflow's own login and authorization: the caller's token (the UI's session cookie or a
Bearer header, as for Airflow's REST API) must allow reading the DAG's runs. At most two reports are built at a time,
each from a bounded number of MLflow queries (ml.report).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Request  # by name from this module's globals: FastAPI resolves the string annotations here

from mlops_airflow.operators import TuningReportLink

REPORTED_DAG = "mlops_training"


async def require_dag_run_reader(request: Request) -> None:
    """Airflow's authentication and authorization for a page about `dag_id`'s runs (401 without a valid token, 403
    without access), with Airflow's own dependencies, imported when a request comes, not when the plugin loads."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_dag

    user = await get_user(request, None, await bearer_scheme(request))
    dag_id = request.query_params.get("dag_id") or REPORTED_DAG  # the page's default, not "any DAG"
    requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id)(request, user)


def _report_app() -> Any:
    import asyncio
    import threading

    from fastapi import Depends, FastAPI, Query
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="MLOps tuning reports")
    builders = threading.BoundedSemaphore(2)  # report builds at once: each holds a thread and MLflow queries

    async def authorized(request: Request) -> None:
        await require_dag_run_reader(request)

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

    return app


class MlopsPlugin(AirflowPlugin):
    name = "mlops_airflow"
    operator_extra_links = [TuningReportLink()]  # noqa: RUF012 - Airflow reads these class attributes
    fastapi_apps = [{"app": _report_app(), "url_prefix": "/mlops", "name": "MLOps tuning reports"}]  # noqa: RUF012
