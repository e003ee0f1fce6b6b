"""What registration and the promotion gate work with, passed explicitly: the MLflow server, the S3 side (checkpoint
files, the alias lock), the Kafka brokers its events go to, and the clock."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ml.clock import SYSTEM_CLOCK, Clock
from ml.settings import KafkaSettings, LakeSettings, MlflowSettings, S3Settings
from ml.topics import Topic

if TYPE_CHECKING:
    from ml.registry.lock import AliasLock

log = logging.getLogger(__name__)

# publish(topic, payload, key, dag_run_id): how events leave; a test passes a recorder instead of Kafka.
Publish = Callable[[Topic, dict[str, Any], str, "str | None"], Any]


class RegistryError(RuntimeError):
    """A registration or promotion could not be completed; the message names the model, version and step."""


@dataclass
class RegistryContext:
    mlflow: MlflowSettings
    s3: S3Settings
    lake: LakeSettings
    kafka: KafkaSettings
    clock: Clock = SYSTEM_CLOCK
    publish: Publish | None = field(default=None, repr=False)  # None: synchronous sends to `kafka`
    lock_ttl_s: float = 120.0
    lock_wait_s: float = 300.0
    lock_keep_renewed: bool = True  # the lock's lease renewal thread (a test with a fake clock may turn it off)

    @cached_property
    def client(self) -> Any:
        from ml.clients import mlflow_client

        return mlflow_client(self.mlflow)

    @cached_property
    def s3_client(self) -> Any:
        from ml.clients import s3_client

        return s3_client(self.s3)

    def lock(self, model_name: str) -> AliasLock:
        """The alias lock of one registered model (ml.registry.lock), renewed while held unless turned off."""
        from ml.registry.lock import AliasLock
        from ml.storage import registry_lock_uri

        return AliasLock(
            registry_lock_uri(self.lake, model_name),
            self.s3_client,
            ttl_s=self.lock_ttl_s,
            wait_s=self.lock_wait_s,
            keep_renewed=self.lock_keep_renewed,
            clock=self.clock,
        )

    def send(self, topic: Topic, payload: dict[str, Any], key: str, dag_run_id: str | None) -> None:
        """Publish one event and wait for the broker (EventPublishError when Kafka does not take it)."""
        if self.publish is not None:
            self.publish(topic, payload, key, dag_run_id)
            return
        from ml.events.publisher import publish_event

        publish_event(self.kafka, topic, payload, key, dag_run_id=dag_run_id)

    def send_pipeline_event(
        self,
        dag_id: str,
        dag_run_id: str | None,
        task_id: str | None,
        event: str,
        details: dict[str, Any],
        *,
        required: bool = True,
    ) -> None:
        """A pipeline lifecycle event (model_registered, model_rejected); `required=False` logs a failure instead."""
        from ml.events.envelope import pipeline_event_key
        from ml.topics import PIPELINE_EVENTS

        payload = {"dag_id": dag_id, "task_id": task_id, "event": event, "details": details}
        try:
            self.send(PIPELINE_EVENTS, payload, pipeline_event_key(dag_id, dag_run_id, task_id, event), dag_run_id)
        except Exception as error:
            if required:
                raise
            log.warning("could not publish the %s pipeline event: %s", event, error)
