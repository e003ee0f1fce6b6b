"""Registers the project's pieces with Airflow: the 'Tuning report' operator link and the report pages, served by
the API server under /mlops (a FastAPI app) and linked from the navigation bar.

The report pages read only MLflow metadata and are not behind Airflow's login: keep the API server on 127.0.0.1
(the local stack does) or put it behind your proxy's auth.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.operators import TuningReportLink


def _report_app() -> Any:
    import asyncio

    from fastapi import FastAPI, Query
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="MLOps tuning reports")

    @app.get("/tuning-report", response_class=HTMLResponse)
    async def tuning_report(run_id: str = Query(...), dag_id: str = Query("mlops_training")) -> HTMLResponse:
        from ml.report import collect_trials, render_report
        from mlops_airflow.hooks import MlflowHook

        def build() -> str:
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
