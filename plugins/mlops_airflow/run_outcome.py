"""The operators that decide and report on a run of mlops_training: the branch that reuses a model already trained on
the same snapshot and code, and the run's summary event. Like operators.py, they only turn connections into settings
and call `ml`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.branch import BaseBranchOperator

from mlops_airflow.hooks import KafkaEventsHook, MlflowHook
from mlops_airflow.templating import as_bool

log = logging.getLogger(__name__)


class PublishRunSummaryOperator(BaseOperator):
    """Publish the run's summary (snapshot, best trial, registered or reused model) as a pipeline event, from the
    upstream tasks' results (XComArgs; a skipped task's result is None, the branch's `existing_model` is {} when the
    run trained)."""

    template_fields: Sequence[str] = ("snapshot", "search", "registered", "existing_model")

    def __init__(
        self,
        *,
        snapshot: Any,
        search: Any = None,
        registered: Any = None,
        existing_model: Any = None,
        kafka_conn_id: str = "kafka_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.snapshot = snapshot
        self.search = search
        self.registered = registered
        self.existing_model = existing_model
        self.kafka_conn_id = kafka_conn_id

    @cached_property
    def kafka_hook(self) -> KafkaEventsHook:
        return KafkaEventsHook(self.kafka_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from ml.events.envelope import pipeline_event_key
        from ml.topics import PIPELINE_EVENTS

        snapshot, search, registered = self.snapshot or {}, self.search or {}, self.registered or {}
        existing = self.existing_model or None  # {} from the branch when it trained
        summary = {
            "dataset": snapshot.get("dataset"),
            "snapshot_id": snapshot.get("snapshot_id"),
            "rows": snapshot.get("rows"),
            "outcome": "reused_existing_model" if existing else "trained",
            "existing_model": existing,
            "best_params": search.get("best_params"),
            "num_trials": search.get("num_trials"),
            "test_metrics": (registered.get("evaluation") or {}).get("test_metrics"),
            "model": {k: v for k, v in registered.items() if k != "evaluation"} or None,
        }
        payload = {"dag_id": self.dag_id, "task_id": self.task_id, "event": "run_summary", "details": summary}
        key = pipeline_event_key(self.dag_id, context["run_id"], self.task_id, "run_summary")
        self.kafka_hook.publish(PIPELINE_EVENTS, payload, key, dag_run_id=context["run_id"])
        log.info("run summary published to %s: %s", PIPELINE_EVENTS.name, summary)
        return summary


class SkipIfModelExistsOperator(BaseBranchOperator):
    """Branch: when a model version already exists for this snapshot and code version, follow `reuse_task_id` and
    skip the expensive steps (the log says which version and why); otherwise follow `train_task_id`. The XCom
    `existing_model` holds that version, `{}` when training: Airflow reads a None XCom as a missing one, and an
    XComArg of a missing key fails the task that consumes it. An MLflow error fails the task: an unreachable
    registry would otherwise start hours of tuning that fail at registration."""

    template_fields: Sequence[str] = ("dataset", "snapshot_id", "ml_task", "force")

    def __init__(
        self,
        *,
        dataset: str,
        snapshot_id: str,
        ml_task: str,
        train_task_id: str,
        reuse_task_id: str,
        force: bool | str = False,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.snapshot_id = snapshot_id
        self.ml_task = ml_task
        self.train_task_id = train_task_id
        self.reuse_task_id = reuse_task_id
        self.force = force
        self.mlflow_conn_id = mlflow_conn_id

    def choose_branch(self, context: Any) -> str:
        existing = self._existing_model()
        context["ti"].xcom_push(key="existing_model", value=existing or {})
        return self.reuse_task_id if existing else self.train_task_id

    def _existing_model(self) -> dict[str, str] | None:
        from ml.lineage import code_version
        from ml.registry.conventions import REGISTRATION_TAG, registered_model_name

        if as_bool(self.force):
            log.info("force_retrain is set: training even if a model exists")
            return None
        name = registered_model_name(str(self.dataset), str(self.ml_task))
        wanted = {"snapshot_id": str(self.snapshot_id), "code_version": code_version(), REGISTRATION_TAG: "complete"}
        hook = MlflowHook(self.mlflow_conn_id)
        hook.available_settings()  # an MLflow that is down, or whose database is, fails here, named
        version = hook.find_model_version(name, wanted)
        if version is None:
            log.info("no version of %s for snapshot %s and code %s: training", name, self.snapshot_id, code_version())
            return None
        log.info(
            "SKIPPING preprocessing, tuning and registration: version %s of %s was already trained on snapshot %s "
            "with code version %s (set the param force_retrain to train anyway)",
            version.version,
            name,
            self.snapshot_id,
            code_version(),
        )
        return {"model": name, "version": str(version.version)}
