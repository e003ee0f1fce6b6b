"""ml.serve.reload: the model holder swaps in only a completely loaded champion, and the promotion watcher follows
promotion events (a fake consumer here) and re-checks the alias on an injected clock, surviving Kafka errors. Waits are
bounded polls for an observable state; no test lets real time pass to make something happen."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml.events.envelope import make_envelope
from ml.models import load_model
from ml.predictor import LoadedModel, TabularPredictor
from ml.serve import reload
from ml.serve.reload import ModelHolder, PromotionWatcher
from ml.settings import KafkaSettings
from ml.topics import MODEL_PROMOTED
from tests.support.fake_clock import FakeClock
from tests.support.stand_in_model import make_checkpoint, make_spec

NAME = "iris-classification"
KAFKA = KafkaSettings("kafka.invalid:9092")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> TabularPredictor:
    spec = make_spec()
    return TabularPredictor(load_model(make_checkpoint(tmp_path_factory.mktemp("model"), spec)), spec)


def model(predictor: TabularPredictor, version: str) -> LoadedModel:
    return LoadedModel(NAME, version, predictor)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """A bounded poll for an observable condition (the watcher runs in its own thread)."""
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        done.wait(0.01)
    assert condition(), f"not within {timeout_s} s: {what}"


# --- ModelHolder -----------------------------------------------------------------------------------------------------


def test_reload_loads_the_version_the_alias_names(predictor: TabularPredictor) -> None:
    holder = ModelHolder(NAME, model(predictor, "1"))
    loads: list[tuple[str, str]] = []

    def loader(name: str, version: str) -> LoadedModel:
        loads.append((name, version))
        return model(predictor, version)

    assert not holder.reload_champion(loader, lambda name: "1")  # already served
    assert holder.reload_champion(loader, lambda name: "2")
    assert (holder.current.version, holder.reloads, loads) == ("2", 1, [(NAME, "2")])


def test_a_failed_reload_keeps_serving_and_says_why(predictor: TabularPredictor) -> None:
    holder = ModelHolder(NAME, model(predictor, "1"))

    def unreachable(name: str) -> str:
        raise LookupError("registered model has no alias champion")

    def broken(name: str, version: str) -> LoadedModel:
        raise OSError("artifact store unreachable")

    assert not holder.reload_champion(broken, unreachable)
    assert holder.current.version == "1" and "LookupError: registered model" in (holder.last_reload_error or "")
    assert not holder.reload_champion(broken, lambda name: "2")
    assert holder.current.version == "1" and holder.last_reload_error == "OSError: artifact store unreachable"
    assert holder.reload_champion(lambda n, v: model(predictor, v), lambda name: "2")
    assert holder.last_reload_error is None and holder.reloads == 1


def test_requests_keep_the_old_model_while_the_new_one_loads(predictor: TabularPredictor) -> None:
    holder = ModelHolder(NAME, model(predictor, "1"))
    loading, release = threading.Event(), threading.Event()
    versions_seen_by_a_second_reload: list[bool] = []

    def slow_loader(name: str, version: str) -> LoadedModel:
        loading.set()
        assert release.wait(10)
        return model(predictor, version)

    thread = threading.Thread(target=holder.reload_champion, args=(slow_loader, lambda name: "2"))
    thread.start()
    assert loading.wait(10)
    assert holder.current.version == "1"  # readers never wait for a reload
    second = threading.Thread(
        target=lambda: versions_seen_by_a_second_reload.append(
            holder.reload_champion(lambda n, v: model(predictor, v), lambda name: "2")
        )
    )
    second.start()  # one reload at a time: this one waits, then finds v2 already served
    release.set()
    thread.join(10)
    second.join(10)
    assert holder.current.version == "2" and holder.reloads == 1 and versions_seen_by_a_second_reload == [False]


# --- PromotionWatcher ------------------------------------------------------------------------------------------------


class FakeConsumer:
    """Like a KafkaConsumer with the promoted topic assigned: poll() returns what a test feeds it."""

    def __init__(self) -> None:
        self.records: queue.Queue[Any] = queue.Queue()
        self.closed = False

    def feed(self, value: bytes) -> None:
        self.records.put(value)

    def poll(self, timeout_ms: int) -> dict[str, list[Any]]:
        try:
            item = self.records.get(timeout=0.01)  # the real poll blocks up to timeout_ms
        except queue.Empty:
            return {}
        if isinstance(item, Exception):
            raise item
        return {"tp": [SimpleNamespace(value=item)]}

    def close(self, **options: Any) -> None:
        self.closed = True


class Kafka:
    """What open_topic does: each call hands out the next consumer or raises the next error."""

    def __init__(self) -> None:
        self.outcomes: queue.Queue[Any] = queue.Queue()
        self.calls: list[dict[str, Any]] = []
        self.consumers: list[FakeConsumer] = []

    def open_topic(self, kafka: KafkaSettings, topic: str, **options: Any) -> FakeConsumer:
        self.calls.append({"kafka": kafka, "topic": topic, **options})
        outcome = self.outcomes.get_nowait() if not self.outcomes.empty() else FakeConsumer()
        if isinstance(outcome, Exception):
            raise outcome
        self.consumers.append(outcome)
        return outcome


class QuickWatcher(PromotionWatcher):
    connect_backoff_s = (0.01, 0.02)


def promoted(model_name: str = NAME, version: str = "2", alias: str = "champion") -> bytes:
    payload = {
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "previous_version": "1",
        "metric": "accuracy",
        "value": 0.9,
        "previous_value": 0.8,
        "reason": "better",
    }
    return json.dumps(make_envelope(MODEL_PROMOTED, payload)).encode()


class Setup:
    def __init__(self, predictor: TabularPredictor, monkeypatch: pytest.MonkeyPatch, alias_poll_s: float) -> None:
        self.kafka = Kafka()
        monkeypatch.setattr(reload, "open_topic", self.kafka.open_topic)
        self.clock = FakeClock()
        self.holder = ModelHolder(NAME, model(predictor, "1"))
        self.champion = "1"
        self.resolved = 0
        self.watcher = QuickWatcher(
            self.holder,
            KAFKA,
            loader=lambda name, version: model(predictor, version),
            resolve=self.resolve,
            alias_poll_s=alias_poll_s,
            clock=self.clock,
        )

    def resolve(self, name: str) -> str:
        self.resolved += 1
        return self.champion


@pytest.fixture
def setup(predictor: TabularPredictor, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    created = Setup(predictor, monkeypatch, alias_poll_s=300.0)
    yield created
    created.watcher.stop()
    assert not created.watcher.alive


def test_a_promotion_event_loads_the_new_champion(setup: Setup) -> None:
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    [call] = setup.kafka.calls
    assert (call["kafka"], call["topic"]) == (KAFKA, MODEL_PROMOTED.name)
    assert call["client_id"].startswith("mlops-serve-") and "group_id" not in call  # every process sees every event
    setup.champion = "2"
    setup.kafka.consumers[0].feed(promoted(version="2"))
    wait_until(lambda: setup.holder.current.version == "2", "v2 is served")
    assert setup.watcher.events_seen == 1 and setup.resolved == 1 and setup.watcher.last_error is None


def test_the_alias_decides_not_the_event(setup: Setup) -> None:
    # Events can arrive out of order: the champion alias names the version to load.
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    setup.champion = "3"
    setup.kafka.consumers[0].feed(promoted(version="2"))
    wait_until(lambda: setup.holder.current.version == "3", "the alias's v3 is served")


def test_events_for_others_and_invalid_events_are_ignored(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    setup.champion = "2"
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    consumer = setup.kafka.consumers[0]
    with caplog.at_level(logging.WARNING, logger="ml.serve.reload"):
        for value in (
            promoted(model_name="other-model"),
            promoted(alias="challenger"),
            b"not json",
            json.dumps({"schema": "model_promoted.v1", "payload": {}}).encode(),
            json.dumps(json.loads(promoted()) | {"schema": "pipeline_event.v1"}).encode(),
        ):
            consumer.feed(value)
        wait_until(lambda: setup.watcher.events_seen == 5, "five events seen")
    assert setup.resolved == 0 and setup.holder.current.version == "1"
    assert caplog.text.count("ignoring an invalid event") == 3


def test_a_message_without_a_value_is_ignored_and_the_watcher_lives_on(setup: Setup) -> None:
    # A tombstone (null value) on the topic: anyone with write access can produce one.
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    setup.kafka.consumers[0].feed(None)  # type: ignore[arg-type]
    wait_until(lambda: setup.watcher.events_seen == 1, "the tombstone seen")
    setup.champion = "2"
    setup.kafka.consumers[0].feed(promoted(version="2"))
    wait_until(lambda: setup.holder.current.version == "2", "v2 is served after the tombstone")
    assert setup.watcher.alive


def test_an_unreachable_broker_is_retried_and_reported(setup: Setup) -> None:
    setup.kafka.outcomes.put(ConnectionError("broker down"))
    setup.kafka.outcomes.put(ConnectionError("broker down"))
    setup.watcher.start()
    wait_until(lambda: len(setup.kafka.calls) >= 2, "a second attempt")
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic once the broker answers")
    assert len(setup.kafka.calls) == 3 and setup.watcher.last_error is None


def test_a_connection_error_is_visible_while_it_lasts(
    predictor: TabularPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = Setup(predictor, monkeypatch, alias_poll_s=300.0)
    for _ in range(10_000):
        created.kafka.outcomes.put(ConnectionError("broker down"))
    created.watcher.start()
    try:
        wait_until(lambda: created.watcher.last_error is not None, "the error is reported")
        assert created.watcher.last_error == (f"cannot follow {MODEL_PROMOTED.name} at kafka.invalid:9092: broker down")
        assert not created.watcher.ready.is_set() and created.watcher.alive
    finally:
        created.watcher.stop()


def test_a_failing_poll_reconnects(setup: Setup) -> None:
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    first = setup.kafka.consumers[0]
    first.feed(OSError("connection reset"))  # type: ignore[arg-type]
    wait_until(lambda: len(setup.kafka.consumers) == 2, "a new consumer")
    assert first.closed
    setup.champion = "2"
    setup.kafka.consumers[1].feed(promoted(version="2"))
    wait_until(lambda: setup.holder.current.version == "2", "v2 is served after the reconnection")


def test_the_alias_is_rechecked_on_the_clock_without_any_event(setup: Setup) -> None:
    # A promotion made while Kafka was down: no event ever arrives; the periodic alias check finds it.
    setup.champion = "2"
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    setup.kafka.consumers[0].feed(promoted(model_name="other-model"))
    wait_until(lambda: setup.watcher.events_seen == 1, "a loop iteration")
    assert setup.resolved == 0  # not yet: the period has not passed on the watcher's clock
    setup.clock.advance(300)
    wait_until(lambda: setup.holder.current.version == "2", "the alias check loads v2")
    assert setup.resolved == 1
    setup.clock.advance(299)
    setup.kafka.consumers[0].feed(promoted(model_name="other-model"))
    wait_until(lambda: setup.watcher.events_seen == 2, "another loop iteration")
    assert setup.resolved == 1  # the next check is a whole period after the last one


def test_stop_closes_the_consumer(setup: Setup) -> None:
    setup.watcher.start()
    wait_until(setup.watcher.ready.is_set, "the watcher follows the topic")
    setup.watcher.stop()
    assert not setup.watcher.alive and setup.kafka.consumers[0].closed


def test_a_watcher_not_started_is_not_alive(setup: Setup, tmp_path: Path) -> None:
    assert not setup.watcher.alive and not setup.watcher.ready.is_set()
    setup.watcher.stop()  # harmless
