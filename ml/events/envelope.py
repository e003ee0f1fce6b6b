"""Event envelopes: built, validated against the topic's JSON Schema (ml/schemas/), keyed.

The schema files are the only definition of what a valid event is. They are compiled once with fastjsonschema
(a few microseconds a message, so the per-epoch metrics stream validates every message); a refusal names the
field and the rule. One message is sent per served request, where the generic path cost ~35 us of the serving
process's CPU, which its request threads share through one GIL (B10): for it and the training metrics,
`ml.events.shapes` holds checks written to the schemas' shapes that prove a payload valid and JSON-safe as it is;
whatever they cannot prove goes through the generic path, which names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import uuid
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ml.clock import utc_iso, utc_now_iso
from ml.events.shapes import SHAPE_CHECKS
from ml.json_values import json_safe
from ml.topics import ALL_TOPICS, Topic

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
# JSON Schema's "uuid" format (fastjsonschema knows the draft-7 formats only); the schemas also pin uuid4 by pattern.
_FORMATS = {"uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}


class EventValidationError(ValueError):
    """An envelope or payload does not match its JSON Schema; the message names the field and the rule."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema `ml/schemas/NAME.json` (NAME is a Topic.schema such as "training_metrics.v1")."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("*.json")))
        raise EventValidationError(f"unknown event schema {name!r} (known: {known})")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@cache
def _validator(name: str) -> Any:
    import fastjsonschema

    return fastjsonschema.compile(load_schema(name), formats=_FORMATS)


def validate_envelope(envelope: Mapping[str, Any], topic: Topic | None = None) -> None:
    """Raise EventValidationError unless `envelope` is valid for its schema (and, if given, is `topic`'s schema)."""
    import fastjsonschema

    if not isinstance(envelope, Mapping):
        raise EventValidationError(f"an event envelope is a JSON object, got {type(envelope).__name__}")
    name = envelope.get("schema")
    if not isinstance(name, str):
        raise EventValidationError("envelope has no 'schema' name")
    if topic is not None and name != topic.schema:
        raise EventValidationError(f"topic {topic.name} carries {topic.schema} events, not {name}")
    try:
        _validator(name)(envelope)
    except fastjsonschema.JsonSchemaValueException as error:
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (error.path or [])[1:])
        raise EventValidationError(f"invalid {name} event: {where}: {error.message}") from None


@lru_cache(maxsize=1)
def producer_id() -> str:
    """Who sent an event: host:pid/program."""
    return f"{socket.gethostname()}:{os.getpid()}/{Path(sys.argv[0] or 'python').name}"


def make_envelope(
    topic: Topic,
    payload: Mapping[str, Any],
    dag_run_id: str | None = None,
    *,
    event_time: float | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Wrap `payload` in the versioned envelope of `topic` and validate it against the topic's JSON Schema.
    `event_time`: when the event happened (epoch seconds; now by default: an envelope built later passes its time).
    `event_id`: the id of a message that may be sent again (`derived_event_id`); a fresh uuid4 by default."""
    envelope = {
        "schema": topic.schema,
        "event_id": event_id or str(uuid.uuid4()),
        "event_time": utc_now_iso() if event_time is None else utc_iso(event_time),
        "dag_run_id": dag_run_id,
        "producer": producer_id(),
        "payload": payload,
    }
    shape_check = SHAPE_CHECKS.get(topic.schema)
    if (
        shape_check is not None
        and event_id is None  # a given id goes through the schema's uuid4 pattern
        and (dag_run_id is None or type(dag_run_id) is str)
        and shape_check(payload)
    ):
        envelope["payload"] = dict(payload)  # proven valid and JSON-safe as it is: a copy, not a conversion
        return envelope
    envelope["payload"] = json_safe(payload)
    validate_envelope(envelope, topic)
    return envelope


def training_metrics_key(run_name: str, trial_id: str, epoch: int) -> str:
    return f"{run_name}:{trial_id}:{epoch}"


def pipeline_event_key(dag_id: str, dag_run_id: str | None, task_id: str | None, event: str) -> str:
    return f"{dag_id}:{dag_run_id or '-'}:{task_id or '-'}:{event}"


def serving_metrics_key(model_name: str, request_id: str) -> str:
    return f"{model_name}:{request_id}"


def drift_key(model_name: str, model_version: str, window_start: str) -> str:
    return f"{model_name}:{model_version}:{window_start}"


def derived_event_id(topic: Topic, key: str) -> str:
    """A uuid4-shaped event id that is a function of the topic and the message key: a message computed and sent
    again (a window recomputed after a restart) keeps its id, so consumers can drop the copy."""
    digest = hashlib.sha256(f"{topic.name}\0{key}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def topic_by_name(name: str) -> Topic | None:
    """The pipeline topic with this name or schema name, or None."""
    return next((t for t in ALL_TOPICS if name in (t.name, t.schema)), None)
