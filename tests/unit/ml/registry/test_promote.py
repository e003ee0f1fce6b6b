"""ml.registry.promote on an in-memory registry, S3 and clock: the gate applied under the alias lock, the decision
recorded and published, a champion that moves while deciding, the unconditional rollback, and the lock's fence and
renewal (a holder whose lock was taken over moves nothing; a slow publish keeps the lock)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ml.registry import promote as promote_module
from ml.registry.context import RegistryError
from ml.registry.lock import AliasLock, LockLost, LockTimeout
from ml.registry.promote import register_and_promote, rollback
from ml.storage import S3Uri
from ml.topics import MODEL_PROMOTED, PIPELINE_EVENTS
from tests.support.fake_clock import FakeClock
from tests.unit.ml.registry.fakes import FakeMlflow, FakeS3, SteppedClock, fake_context

NAME = "iris-classification"
LOCK = ("lake", f"locks/registry/{NAME}.lock")
DECIDED_AT = "2030-03-17T17:46:40.000Z"  # FakeClock's wall time


def complete(mlflow: FakeMlflow, version: int, accuracy: float | None, snapshot: str = "snap-a", **tags: str) -> None:
    values = {"mlops.registration": "complete", "snapshot_id": snapshot, "dag_run_id": f"run-{version}", **tags}
    if accuracy is not None:
        values["test.accuracy"] = repr(accuracy)
    mlflow.add(NAME, version, **values)


class Registry:
    def __init__(self, **context: Any) -> None:
        self.mlflow, self.s3, self.clock = FakeMlflow(), FakeS3(), FakeClock()
        self.published: list[tuple[Any, ...]] = []
        self.context = fake_context(self.mlflow, self.s3, self.clock, self.published, **context)

    def promote(self, version: str | int, **kwargs: Any) -> dict[str, Any]:
        return promote_module.promote(self.context, NAME, version, **{"metric": "accuracy", **kwargs})

    @property
    def champion(self) -> str | None:
        return self.mlflow.aliases.get((NAME, "champion"))


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_the_first_complete_version_becomes_champion(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    result = registry.promote("1", dag_id="mlops_training")
    assert (result["decision"], result["promoted"], result["champion"], result["previous_champion"]) == (
        "first_model",
        True,
        "1",
        None,
    )
    assert (result["metric"], result["value"], result["event"]) == ("accuracy", 0.8, "model_promoted")
    assert registry.champion == "1"
    tags = registry.mlflow.versions[(NAME, "1")].tags
    assert tags["gate.decision"] == "first_model" and tags["gate.decided_at"] == DECIDED_AT
    assert tags["champion_since"] == DECIDED_AT and tags["gate.champion_version"] == ""
    assert (tags["gate.metric"], tags["gate.margin"], tags["gate.higher_is_better"]) == ("accuracy", "0.0", "true")
    [(topic, payload, key, run)] = registry.published
    assert (topic, key, run) == (MODEL_PROMOTED, NAME, "run-1")  # the run id from the version's lineage
    assert payload == {
        "model_name": NAME,
        "version": "1",
        "alias": "champion",
        "previous_version": None,
        "metric": "accuracy",
        "value": 0.8,
        "previous_value": None,
        "reason": "no champion yet: the first model becomes champion",
    }


def test_the_alias_never_points_at_a_version_before_its_gate_tags_say_so(registry: Registry) -> None:
    """The prediction service serves only versions whose tags show the gate passed them (ml.predictor): the alias
    moves after those tags, for a promotion and for a rollback."""
    from ml.predictor import ungated_reason

    complete(registry.mlflow, 1, 0.8, metric="accuracy")
    complete(registry.mlflow, 2, 0.9, metric="accuracy")
    reasons: list[str | None] = []

    def alias_moves() -> None:
        target = "2" if not reasons else "1"  # the promotion of v2, then the rollback to v1
        reasons.append(ungated_reason(registry.mlflow.versions[(NAME, target)].tags))

    registry.mlflow.on["set_registered_model_alias"] = [alias_moves, alias_moves]
    registry.promote("2")
    rollback(registry.context, NAME, 1, reason="v2 misbehaves")
    assert reasons == [None, None] and registry.champion == "1"


def test_a_worse_version_is_rejected_and_announced_as_a_pipeline_event(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    complete(registry.mlflow, 2, 0.7)
    result = registry.promote(2, dag_id="mlops_training", dag_run_id="run-x")
    assert (result["decision"], result["promoted"], result["champion"], result["event"]) == (
        "rejected",
        False,
        "1",
        "model_rejected",
    )
    assert registry.champion == "1"
    tags = registry.mlflow.versions[(NAME, "2")].tags
    assert (tags["gate.decision"], tags["gate.value"], tags["gate.champion_value"]) == ("rejected", "0.7", "0.8")
    assert "champion_since" not in tags and "replaced_by" not in registry.mlflow.versions[(NAME, "1")].tags
    [(topic, payload, key, run)] = registry.published
    assert (topic, key, run) == (PIPELINE_EVENTS, "mlops_training:run-x:-:model_rejected", "run-x")
    assert payload["event"] == "model_rejected" and payload["details"]["champion_version"] == "1"
    assert payload["details"]["version"] == "2" and "does not beat" in payload["details"]["reason"]


def test_a_better_version_replaces_the_champion(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    complete(registry.mlflow, 2, 0.9)
    result = registry.promote("2")
    assert (result["decision"], result["champion"], result["previous_champion"]) == ("promoted", "2", "1")
    assert (result["value"], result["champion_value"]) == (0.9, 0.8)
    assert registry.champion == "2"
    assert registry.mlflow.versions[(NAME, "1")].tags["replaced_by"] == "2"
    [(topic, payload, _, _)] = registry.published
    assert topic == MODEL_PROMOTED and (payload["previous_version"], payload["previous_value"]) == ("1", 0.8)


def test_the_alias_moves_and_the_event_leaves_while_the_lock_is_held(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    seen: list[tuple[str, bool]] = []
    registry.mlflow.on["set_registered_model_alias"] = [lambda: seen.append(("alias", LOCK in registry.s3.objects))]
    registry.context.publish = lambda *args: seen.append(("event", LOCK in registry.s3.objects))
    registry.promote("1")
    assert seen == [("alias", True), ("event", True)]
    assert LOCK not in registry.s3.objects


def test_promoting_the_champion_again_republishes_it(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    registry.promote("1")
    registry.published.clear()
    again = registry.promote("1")  # a retried task that failed right after moving the alias
    assert (again["decision"], again["promoted"], again["event"]) == ("already_champion", False, "model_promoted")
    [(topic, payload, _, _)] = registry.published
    assert topic == MODEL_PROMOTED and payload["version"] == "1" and payload["previous_version"] is None


def test_a_version_that_is_not_completely_registered_is_refused(registry: Registry) -> None:
    registry.mlflow.add(NAME, 1, **{"mlops.registration": "pending", "test.accuracy": "0.9"})
    with pytest.raises(RegistryError, match="v1 is not completely registered"):
        registry.promote("1")
    with pytest.raises(LookupError, match="no version or alias '7'"):
        registry.promote("7")
    assert registry.champion is None and registry.published == []


def test_a_champion_that_moved_while_deciding_is_decided_against_again(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    complete(registry.mlflow, 2, 0.95)
    complete(registry.mlflow, 3, 0.9)
    registry.mlflow.aliases[(NAME, "champion")] = "1"

    def other_gate_promotes_2() -> None:
        registry.mlflow.aliases[(NAME, "champion")] = "2"

    registry.s3.before["put_object"] = [other_gate_promotes_2]  # between deciding on v3 and taking the lock
    result = registry.promote("3")
    assert (result["decision"], result["previous_champion"], result["champion_value"]) == ("rejected", "2", 0.95)
    assert registry.champion == "2"  # the better winner is not overwritten


def test_a_champion_that_keeps_moving_is_an_error(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    complete(registry.mlflow, 2, 0.9)
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    flips = iter(["2", "1"] * promote_module.MAX_DECISIONS)

    def flip() -> None:
        registry.mlflow.aliases[(NAME, "champion")] = next(flips)

    registry.s3.before["put_object"] = [flip] * promote_module.MAX_DECISIONS
    with pytest.raises(RegistryError, match="the champion kept moving while gating v2"):
        registry.promote("2")
    assert registry.published == [] and "gate.decision" not in registry.mlflow.versions[(NAME, "2")].tags


@pytest.mark.parametrize("move", ["promote", "rollback"])
def test_a_holder_whose_lock_was_taken_over_never_moves_the_alias(registry: Registry, move: str) -> None:
    complete(registry.mlflow, 1, 0.8)
    complete(registry.mlflow, 2, 0.9)
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    taker = AliasLock(S3Uri(*LOCK), registry.s3, wait_s=0, keep_renewed=False, clock=registry.clock)

    def stall_past_the_ttl_and_lose_the_lock() -> None:
        registry.clock.advance(121)  # the holder stalls while writing its tags; its lock expires ...
        taker.acquire()  # ... and another gate takes it over

    registry.mlflow.on["set_model_version_tag"] = [stall_past_the_ttl_and_lose_the_lock]
    with pytest.raises(LockLost, match=f"{LOCK[1]} is no longer ours: .* held by {taker.owner} now"):
        registry.promote("2") if move == "promote" else rollback(registry.context, NAME, "2")
    assert "set_registered_model_alias" not in [method for method, _ in registry.mlflow.calls]
    assert registry.champion == "1" and registry.published == []
    assert json.loads(registry.s3.body(*LOCK))["owner"] == taker.owner  # its late release left the taker's lock


def test_every_write_under_the_lock_is_fenced(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8)
    complete(registry.mlflow, 2, 0.9)
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    fenced: list[str] = []  # what the last S3 call was when each write began: the fence (a HEAD) or not
    last_s3_call = lambda what: lambda: fenced.append(f"{what} after {registry.s3.calls[-1][0]}")  # noqa: E731
    registry.mlflow.on["set_model_version_tag"] = [last_s3_call("tags")]
    registry.mlflow.on["set_registered_model_alias"] = [last_s3_call("alias")]
    registry.context.publish = lambda *args: last_s3_call("event")()
    registry.promote("2")
    assert fenced == ["tags after head_object", "alias after head_object", "event after head_object"]


def test_a_publish_slower_than_the_ttl_keeps_the_lock_by_renewing_it() -> None:
    mlflow, s3, clock = FakeMlflow(), FakeS3(), SteppedClock()
    complete(mlflow, 1, 0.8)
    context = fake_context(mlflow, s3, clock, lock_ttl_s=30, lock_keep_renewed=True)
    waiters: list[str] = []

    def slow_publish(*args: Any) -> None:
        for _ in range(4):  # 40 s of a 30 s TTL pass while Kafka takes the event; the renewal thread runs each 10 s
            clock.step()
        with pytest.raises(LockTimeout) as refused:  # so another gate still finds the lock held, not expired
            AliasLock(S3Uri(*LOCK), s3, wait_s=0, keep_renewed=False, clock=clock).acquire()
        waiters.append(str(refused.value))

    context.publish = slow_publish
    assert promote_module.promote(context, NAME, "1", metric="accuracy")["promoted"]
    [refusal] = waiters
    assert "held by" in refusal and mlflow.aliases[(NAME, "champion")] == "1"
    assert LOCK not in s3.objects  # released afterwards
    clock.step(then_asleep=False)  # let the renewal thread see the release and end


def test_a_champion_of_another_snapshot_is_rescored(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def rescore(context: Any, name: str, challenger: str, champion: str, metric: str) -> tuple[float, float]:
        calls.append((name, challenger, champion, metric))
        return 0.91, 0.85

    monkeypatch.setattr("ml.registry.rescore.rescore_on_test_split", rescore)
    complete(registry.mlflow, 1, 0.99, snapshot="snap-a")
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    complete(registry.mlflow, 2, 0.5, snapshot="snap-b")
    result = registry.promote("2", metric="val_accuracy")
    assert calls == [(NAME, "2", "1", "accuracy")]
    assert (result["decision"], result["value"], result["champion_value"]) == ("promoted", 0.91, 0.85)
    assert "re-scored" in result["reason"]


def test_a_backfill_is_not_rescored_and_never_promoted(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    def rescore(*args: Any) -> tuple[float, float]:
        raise AssertionError("a backfill that cannot be promoted needs no re-scoring")

    monkeypatch.setattr("ml.registry.rescore.rescore_on_test_split", rescore)
    complete(registry.mlflow, 1, 0.5, snapshot="snap-a")
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    complete(registry.mlflow, 2, 0.99, snapshot="snap-b")
    result = registry.promote("2", is_backfill=True)
    assert result["decision"] == "rejected" and "backfill" in result["reason"] and registry.champion == "1"
    assert registry.mlflow.versions[(NAME, "2")].tags["gate.is_backfill"] == "true"


def test_the_direction_comes_from_the_metric_unless_given(registry: Registry) -> None:
    registry.mlflow.add(NAME, 1, **{"mlops.registration": "complete", "snapshot_id": "s", "test.rmse": "0.5"})
    registry.mlflow.aliases[(NAME, "champion")] = "1"
    registry.mlflow.add(NAME, 2, **{"mlops.registration": "complete", "snapshot_id": "s", "test.rmse": "0.4"})
    assert registry.promote("2", metric="test_rmse")["decision"] == "promoted"  # rmse: lower is better
    registry.mlflow.add(NAME, 3, **{"mlops.registration": "complete", "snapshot_id": "s", "test.rmse": "0.3"})
    assert registry.promote("3", metric="rmse", higher_is_better=True)["decision"] == "rejected"
    with pytest.raises(ValueError, match="unknown metric"):
        registry.promote("3", metric="sharpness")


# --- rollback --------------------------------------------------------------------------------------------------------


def test_rollback_moves_the_champion_unconditionally_and_announces_it(registry: Registry) -> None:
    complete(registry.mlflow, 1, 0.8, metric="accuracy")
    complete(registry.mlflow, 2, 0.9, metric="accuracy")
    registry.mlflow.aliases[(NAME, "champion")] = "2"
    result = rollback(registry.context, NAME, 1, reason="v2 misbehaves")
    assert result == {"model_name": NAME, "champion": "1", "previous_champion": "2", "reason": "v2 misbehaves"}
    assert registry.champion == "1"
    tags = registry.mlflow.versions[(NAME, "1")].tags
    assert (tags["rollback.from_version"], tags["rollback.reason"], tags["rollback.at"]) == (
        "2",
        "v2 misbehaves",
        DECIDED_AT,
    )
    assert tags["champion_since"] == DECIDED_AT
    [(topic, payload, key, run)] = registry.published
    assert (topic, key, run) == (MODEL_PROMOTED, NAME, None)
    assert payload == {
        "model_name": NAME,
        "version": "1",
        "alias": "champion",
        "previous_version": "2",
        "metric": "accuracy",
        "value": 0.8,
        "previous_value": 0.9,
        "reason": "v2 misbehaves",
    }
    assert LOCK not in registry.s3.objects


def test_rollback_without_a_champion_or_metric(registry: Registry) -> None:
    registry.mlflow.add(NAME, 1)  # registered before registration tags existed: allowed
    result = rollback(registry.context, NAME, "1")
    assert (result["previous_champion"], result["reason"]) == (None, "manual rollback")
    [(_, payload, _, _)] = registry.published
    assert (payload["metric"], payload["value"], payload["previous_value"]) == ("unknown", None, None)


def test_rollback_refuses_a_missing_or_incomplete_version(registry: Registry) -> None:
    registry.mlflow.add(NAME, 1, **{"mlops.registration": "pending"})
    with pytest.raises(RegistryError, match=r"v1 is not completely registered \(pending\)"):
        rollback(registry.context, NAME, "1")
    with pytest.raises(LookupError):
        rollback(registry.context, NAME, "9")
    assert registry.champion is None and registry.published == []


# --- register_and_promote --------------------------------------------------------------------------------------------


def test_register_and_promote_gates_the_registered_version(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[dict[str, Any]] = []

    def register_model(evaluation: Any, context: Any, **kwargs: Any) -> dict[str, Any]:
        registered.append(kwargs)
        registry.mlflow.add(NAME, 1, **{"mlops.registration": "complete", "snapshot_id": "s", "test.loss": "0.2"})
        return {"model_name": NAME, "version": "1", "model_uri": f"models:/{NAME}/1", "created": True}

    monkeypatch.setattr(promote_module, "register_model", register_model)
    evaluation = {"metric": "val_loss", "higher_is_better": False}
    result = register_and_promote(evaluation, registry.context, dag_id="d", dag_run_id="r", task_id="t", margin=0.1)
    assert registered == [
        {
            "dag_id": "d",
            "dag_run_id": "r",
            "code_version": None,
            "is_backfill": False,
            "task_id": "t",
            "trigger_event": None,
        }
    ]
    assert (result["version"], result["created"], result["decision"], result["metric"]) == (
        "1",
        True,
        "first_model",
        "loss",
    )
    assert set(result) == {
        "model_name",
        "version",
        "model_uri",
        "created",
        "decision",
        "promoted",
        "champion",
        "previous_champion",
        "metric",
        "value",
        "champion_value",
        "reason",
    }
    tags = registry.mlflow.versions[(NAME, "1")].tags
    assert (tags["gate.higher_is_better"], tags["gate.margin"]) == ("false", "0.1")  # what evaluation decided


def test_unused_fakes_are_not_touched() -> None:
    # The fake clock and S3 of a fresh context: promote never sleeps when nobody holds the lock.
    clock, s3 = FakeClock(), FakeS3()
    mlflow = FakeMlflow()
    complete(mlflow, 1, 0.8)
    promote_module.promote(fake_context(mlflow, s3, clock), NAME, "1", metric="accuracy")
    assert clock.sleeps == [] and s3.objects == {}
