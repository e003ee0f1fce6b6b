"""Check OpenLineage events against OpenLineage's own models (openlineage-python's `event_v2` and facet classes).

OpenLineage ships its spec as attrs classes with validators (run ids are UUIDs, event times ISO 8601 with a time,
event types from its enum); `run_event` builds a `RunEvent` from an event's JSON through them, field by field, and
refuses a missing required field, an unknown field, a wrong type or a facet that is not one. Facets are built as the
class their `_schemaURL` names (`...#/$defs/ParentRunFacet`), or, for the custom facets that name only the generic
`RunFacet`/`JobFacet`, as the Airflow provider's class of that key; other custom facets must at least carry the
`_producer` and `_schemaURL` every facet has.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
import typing
from enum import Enum
from functools import cache
from typing import Any

import attr

FACET_BASES = ("BaseFacet", "RunFacet", "JobFacet", "DatasetFacet", "InputDatasetFacet", "OutputDatasetFacet")


class NotOpenLineage(ValueError):
    """The document is not what OpenLineage's models accept; the message says where."""


@cache
def _facet_classes() -> dict[str, type]:
    """Every facet class of openlineage-python's generated models, by its class name (the `$defs` name)."""
    import openlineage.client.generated as generated

    classes: dict[str, type] = {}
    for module_info in pkgutil.iter_modules(generated.__path__):
        module = importlib.import_module(f"{generated.__name__}.{module_info.name}")
        for name, value in vars(module).items():
            if isinstance(value, type) and attr.has(value) and name.endswith("Facet") and name not in FACET_BASES:
                classes[name] = value
    return classes


@cache
def _airflow_facets() -> dict[tuple[str, str], type]:
    """The Airflow provider's own facets, by kind and the key it sends them under (their `_schemaURL` names only
    `RunFacet` or `JobFacet`)."""
    from airflow.providers.openlineage.plugins import facets

    return {
        ("RunFacet", "airflow"): facets.AirflowRunFacet,
        ("RunFacet", "airflowDagRun"): facets.AirflowDagRunFacet,
        ("RunFacet", "airflowState"): facets.AirflowStateRunFacet,
        ("RunFacet", "airflow_mappedTask"): facets.AirflowMappedTaskRunFacet,
        ("RunFacet", "debug"): facets.AirflowDebugRunFacet,
        ("JobFacet", "airflow"): facets.AirflowJobFacet,
    }


def run_event(doc: Any) -> Any:
    """The `openlineage.client.event_v2.RunEvent` of `doc` (an event as JSON); NotOpenLineage if it is not one."""
    from openlineage.client.event_v2 import RunEvent

    return _build(RunEvent, doc, "event")


def _build(cls: type, doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise NotOpenLineage(f"{where}: a JSON object expected, got {type(doc).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {field.name.lstrip("_") if field.name.startswith("_") else field.name: field for field in attr.fields(cls)}
    json_names = {("_" + key if field.name.startswith("_") else key): field for key, field in fields.items()}
    unknown = set(doc) - set(json_names)
    if unknown:
        raise NotOpenLineage(f"{where}: fields {sorted(unknown)} are not in {cls.__name__}")
    arguments: dict[str, Any] = {}
    for json_name, field in json_names.items():
        if not field.init:  # the class sets it (its own schema URL): only its presence is checked, in _facet
            continue
        if json_name not in doc:
            if field.default is attr.NOTHING:
                raise NotOpenLineage(f"{where}: required field {json_name!r} of {cls.__name__} is missing")
            continue
        value = _value(hints[field.name], doc[json_name], f"{where}.{json_name}", json_name)
        arguments[field.alias or field.name] = value
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:  # the models' own validators
        raise NotOpenLineage(f"{where}: {cls.__name__} refuses it: {error}") from None


def _value(hint: Any, value: Any, where: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        [hint] = [arg for arg in args if arg is not type(None)]
        return _value(hint, value, where, key)
    if origin is list:
        if not isinstance(value, list):
            raise NotOpenLineage(f"{where}: a list expected")
        return [_value(args[0], item, f"{where}[{i}]", key) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise NotOpenLineage(f"{where}: an object expected")
        item_type = args[1] if args else Any
        if isinstance(item_type, type) and item_type.__name__ in FACET_BASES:
            kind = item_type.__name__
            return {name: _facet(facet, f"{where}.{name}", kind, name) for name, facet in value.items()}
        return {name: _value(item_type, item, f"{where}.{name}", name) for name, item in value.items()}
    if hint is Any or hint is dict:
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise NotOpenLineage(f"{where}: {value!r} is not one of {[e.value for e in hint]}") from None
    if isinstance(hint, type) and attr.has(hint):
        return _build(hint, value, where)
    expected = hint if isinstance(hint, type) else object
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise NotOpenLineage(f"{where}: {value!r} is not a {getattr(hint, '__name__', hint)}")
    return value


def _facet(doc: Any, where: str, kind: str, key: str) -> Any:
    if not isinstance(doc, dict) or not isinstance(doc.get("_producer"), str) or "_schemaURL" not in doc:
        raise NotOpenLineage(f"{where}: a facet needs _producer and _schemaURL")
    defined = str(doc["_schemaURL"]).rpartition("/")[2]
    cls = _facet_classes().get(defined) or _airflow_facets().get((kind, key))
    if cls is None:
        if defined not in FACET_BASES:
            raise NotOpenLineage(f"{where}: no OpenLineage facet is named {defined!r}")
        return doc  # a custom facet of a generic kind: nothing more is specified for it
    return _build(cls, doc, where)
