"""Moving the `champion` alias: the gated promotion of a registered version, and the unconditional rollback.

The expensive part of the gate (re-scoring the champion on the challenger's test split) runs before the alias lock;
under the lock the champion is re-read and, if it moved meanwhile, the decision is made again against the new
champion. The decision is recorded as `gate.*` version tags and published (model_promoted when the alias moved,
a model_rejected pipeline event otherwise) under the lock, so promotion events reach consumers in the order the
alias moved.

The lock's lease is renewed in the background while it is held (a synchronous Kafka publish can take tens of
seconds), and each write under it (the decision's tags, the alias, the event; the rollback's likewise) is preceded by
`AliasLock.ensure_held()`: a gate whose lock expired and was taken over raises `LockLost` instead of moving the alias.
What it wrote before it noticed stays (e.g. `gate.*` tags without the alias move, or an alias move without its
event); the task fails, and its retry decides again under the lock (an already-champion version re-publishes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ml.clock import utc_now_iso
from ml.predictor import alias_version, resolve_version
from ml.registry.context import RegistryContext, RegistryError
from ml.registry.conventions import CHAMPION, REGISTRATION_TAG, test_metric
from ml.registry.gate import GateDecision, GateRule, VersionFacts, decide, needs_rescore
from ml.registry.register import register_model
from ml.topics import MODEL_PROMOTED

log = logging.getLogger(__name__)

MAX_DECISIONS = 5  # a champion that keeps moving while we decide: give up after this many tries


def promote(
    context: RegistryContext,
    model_name: str,
    version: str | int,
    *,
    metric: str,
    margin: float = 0.0,
    higher_is_better: bool | None = None,
    is_backfill: bool = False,
    allow_backfill_promotion: bool = False,
    dag_id: str | None = None,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """The promotion gate (ml.registry.gate) applied to `version` and the current champion, under the alias lock."""
    from ml.models import base_metric_name
    from ml.models import higher_is_better as metric_higher_is_better

    client = context.client
    version = str(version)
    base = base_metric_name(metric)
    rule = GateRule(
        metric=base,
        higher_is_better=metric_higher_is_better(base) if higher_is_better is None else higher_is_better,
        margin=margin,
        is_backfill=is_backfill,
        allow_backfill_promotion=allow_backfill_promotion,
    )
    challenger_version = resolve_version(client, model_name, version)
    if challenger_version.tags.get(REGISTRATION_TAG) != "complete":
        raise RegistryError(f"{model_name} v{version} is not completely registered: it cannot be promoted")
    challenger = VersionFacts(version, dict(challenger_version.tags))
    for _attempt in range(MAX_DECISIONS):
        champion_before = alias_version(client, model_name, CHAMPION)
        decision = _decide(context, model_name, challenger, champion_before, rule)
        with context.lock(model_name) as lock:
            if alias_version(client, model_name, CHAMPION) != champion_before:
                log.info("%s: champion moved while deciding on v%s: deciding again", model_name, version)
                continue
            # The decision's tags first: the prediction service serves only a version whose tags say it passed the
            # gate (ml.predictor.ungated_reason), so the alias must never point at it before they are there.
            # Every write is fenced: a gate whose lock was taken over (it stalled past the TTL) writes nothing more.
            lock.ensure_held()
            _record_decision(context, model_name, version, decision, rule)
            if decision.promote:
                lock.ensure_held()
                client.set_registered_model_alias(model_name, CHAMPION, version)
                if alias_version(client, model_name, CHAMPION) != version:  # the lock should make this impossible
                    raise RegistryError(f"{model_name}: champion alias did not stick to v{version}")
            run_id = dag_run_id or challenger.tags.get("dag_run_id")
            lock.ensure_held()  # events leave in the order the alias moved; a retry re-publishes (already_champion)
            event = _publish_decision(context, model_name, version, decision, rule, dag_id=dag_id, dag_run_id=run_id)
        break
    else:
        raise RegistryError(f"{model_name}: the champion kept moving while gating v{version}; try again")
    log.info("%s v%s: %s (%s)", model_name, version, decision.decision, decision.reason)
    return {
        "model_name": model_name,
        "version": version,
        "decision": decision.decision,
        "promoted": decision.promote,
        "champion": version if decision.promote else champion_before,
        "previous_champion": champion_before,
        "metric": base,
        "value": decision.value,
        "champion_value": decision.champion_value,
        "reason": decision.reason,
        "event": event,
    }


def _decide(
    context: RegistryContext, name: str, challenger: VersionFacts, champion_version: str | None, rule: GateRule
) -> GateDecision:
    champion = None
    if champion_version is not None:
        champion = VersionFacts(champion_version, dict(context.client.get_model_version(name, champion_version).tags))
    rescored = None
    if needs_rescore(challenger, champion, rule.metric) and not (
        rule.is_backfill and not rule.allow_backfill_promotion
    ):
        from ml.registry.rescore import rescore_on_test_split

        assert champion is not None
        rescored = rescore_on_test_split(context, name, challenger.version, champion.version, rule.metric)
    return decide(challenger, champion, rule, rescored)


def _record_decision(context: RegistryContext, name: str, version: str, decision: GateDecision, rule: GateRule) -> None:
    client = context.client
    tags = {
        "gate.decision": decision.decision,
        "gate.reason": decision.reason,
        "gate.metric": rule.metric,
        "gate.margin": repr(rule.margin),
        "gate.higher_is_better": str(rule.higher_is_better).lower(),
        "gate.is_backfill": str(rule.is_backfill).lower(),
        "gate.champion_version": decision.champion_version or "",
        "gate.decided_at": utc_now_iso(context.clock),
    }
    if decision.value is not None:
        tags["gate.value"] = repr(decision.value)
    if decision.champion_value is not None:
        tags["gate.champion_value"] = repr(decision.champion_value)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        client.set_model_version_tag(name, version, "champion_since", tags["gate.decided_at"])
        if decision.champion_version:
            client.set_model_version_tag(name, decision.champion_version, "replaced_by", version)


def _publish_decision(
    context: RegistryContext,
    name: str,
    version: str,
    decision: GateDecision,
    rule: GateRule,
    *,
    dag_id: str | None,
    dag_run_id: str | None,
) -> str:
    if decision.promote or decision.decision == "already_champion":
        # Re-published for an already-champion version: a retried task may have failed right after the move.
        payload = {
            "model_name": name,
            "version": version,
            "alias": CHAMPION,
            "previous_version": decision.champion_version if decision.champion_version != version else None,
            "metric": rule.metric,
            "value": decision.value,
            "previous_value": decision.champion_value,
            "reason": decision.reason,
        }
        context.send(MODEL_PROMOTED, payload, name, dag_run_id)
        return "model_promoted"
    details = {
        "model_name": name,
        "version": version,
        "metric": rule.metric,
        "value": decision.value,
        "champion_version": decision.champion_version,
        "champion_value": decision.champion_value,
        "reason": decision.reason,
    }
    context.send_pipeline_event(dag_id or "manual", dag_run_id, None, "model_rejected", details)
    return "model_rejected"


def rollback(
    context: RegistryContext, model_name: str, version: str | int, *, reason: str = "manual rollback"
) -> dict[str, Any]:
    """Move `champion` to `version` unconditionally (recorded as version tags and published as model_promoted)."""
    client = context.client
    version = str(version)
    target = resolve_version(client, model_name, version)  # LookupError if there is no such version
    if target.tags.get(REGISTRATION_TAG) not in (None, "complete"):
        raise RegistryError(f"{model_name} v{version} is not completely registered ({target.tags[REGISTRATION_TAG]})")
    metric = target.tags.get("metric", "unknown")
    with context.lock(model_name) as lock:
        previous = alias_version(client, model_name, CHAMPION)
        at = utc_now_iso(context.clock)
        tags = {"rollback.at": at, "rollback.from_version": previous or "", "rollback.reason": reason}
        lock.ensure_held()
        for key, value in {**tags, "champion_since": at}.items():  # before the alias: what serving checks
            client.set_model_version_tag(model_name, version, key, value)
        lock.ensure_held()
        client.set_registered_model_alias(model_name, CHAMPION, version)
        previous_tags = client.get_model_version(model_name, previous).tags if previous else {}
        payload = {
            "model_name": model_name,
            "version": version,
            "alias": CHAMPION,
            "previous_version": previous,
            "metric": metric,
            "value": test_metric(target.tags, metric),
            "previous_value": test_metric(previous_tags, metric) if previous else None,
            "reason": reason,
        }
        lock.ensure_held()
        context.send(MODEL_PROMOTED, payload, model_name, None)
    log.info("%s: champion moved from v%s to v%s (%s)", model_name, previous, version, reason)
    return {"model_name": model_name, "champion": version, "previous_champion": previous, "reason": reason}


def register_and_promote(
    evaluation: Mapping[str, Any],
    context: RegistryContext,
    *,
    dag_id: str,
    dag_run_id: str,
    code_version: str | None = None,
    metric: str | None = None,
    margin: float = 0.0,
    higher_is_better: bool | None = None,
    is_backfill: bool = False,
    allow_backfill_promotion: bool = False,
    task_id: str | None = None,
    trigger_event: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`register_model` then `promote`: what the pipeline's register task runs. Returns both results in one dict.
    `trigger_event`: what started the DAG run (its `event` param), recorded in the version's tags."""
    registered = register_model(
        evaluation,
        context,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
        code_version=code_version,
        is_backfill=is_backfill,
        task_id=task_id,
        trigger_event=trigger_event,
    )
    if higher_is_better is None and metric is None and isinstance(evaluation.get("higher_is_better"), bool):
        higher_is_better = evaluation["higher_is_better"]  # what evaluation decided for its metric
    gate = promote(
        context,
        registered["model_name"],
        registered["version"],
        metric=metric or str(evaluation["metric"]),
        margin=margin,
        higher_is_better=higher_is_better,
        is_backfill=is_backfill,
        allow_backfill_promotion=allow_backfill_promotion,
        dag_id=dag_id,
        dag_run_id=dag_run_id,
    )
    return {
        "model_name": registered["model_name"],
        "version": registered["version"],
        "model_uri": registered["model_uri"],
        "created": registered["created"],
        **{key: gate[key] for key in ("decision", "promoted", "champion", "previous_champion", "metric", "value")},
        "champion_value": gate["champion_value"],
        "reason": gate["reason"],
    }
