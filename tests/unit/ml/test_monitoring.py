"""ml.monitoring: the monitoring page's reading of a topic (a fake consumer that answers as kafka-python does: offsets
by time, end offsets, polls), its aggregations with numbers worked out by hand, and the page it renders."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from ml.clock import utc_iso
from ml.events.envelope import make_envelope
from ml.monitoring import DRIFT_CAP, SERVING_CAP, monitoring_page
from ml.monitoring.aggregate import drift_series, latency_by_minute, percentile
from ml.monitoring.read import Event, TopicRead, capped_starts, parse_message, read_since
from ml.monitoring.render import psi_svg
from ml.settings import KafkaSettings
from ml.topics import DRIFT, SERVING_METRICS, Topic
from tests.support.fake_clock import FakeClock
from tests.unit.ml.events.samples import DRIFT as DRIFT_SAMPLE
from tests.unit.ml.events.samples import SERVING as SERVING_SAMPLE

KAFKA = KafkaSettings("kafka:9092")
NOW = 1_900_000_000.0  # 2030-03-17T17:46:40Z
HOSTILE = '<script>alert("x")</script>&'


def drift_payload(model: str, version: str, start: float, psi: dict[str, float | None], threshold: float = 0.25) -> Any:
    payload: dict[str, Any] = copy.deepcopy(DRIFT_SAMPLE)
    features = []
    for name, value in psi.items():
        feature = {
            **payload["features"][0],
            "name": name,
            "psi": value,
            "drifted": value is not None and value >= threshold,
        }
        if value is None:
            feature.update(rows=0, missing_share=None, statistic=None, p_value=None)
        features.append(feature)
    drifted = [f["name"] for f in features if f["drifted"]]
    payload.update(
        model_name=model,
        model_version=version,
        window_start=utc_iso(start),
        window_end=utc_iso(start + 60),
        drifted=bool(drifted),
        drifted_features=drifted,
        thresholds={"psi": threshold, "min_rows": 50},
        features=features,
    )
    return payload


def serving_payload(model: str, version: str, latency_ms: float, status: int = 200) -> Any:
    return {**SERVING_SAMPLE, "model_name": model, "model_version": version, "latency_ms": latency_ms, "status": status}


def message(topic: Topic, payload: Any, at: float) -> bytes:
    return json.dumps(make_envelope(topic, payload, event_time=at)).encode()


class FakeConsumer:
    """kafka-python's KafkaConsumer as read_since uses it: partitions of (Kafka timestamp, value) messages, two
    records a poll; `later` messages arrive after the end offsets were taken; a stalled consumer never answers and
    each poll takes its whole timeout on the fake clock."""

    def __init__(
        self, topic: str, partitions: Sequence[Sequence[tuple[float, bytes | None]]], clock: FakeClock
    ) -> None:
        from kafka import TopicPartition

        self.parts = {TopicPartition(topic, n): list(messages) for n, messages in enumerate(partitions)}
        self.positions = {p: len(m) for p, m in self.parts.items()}
        self.clock = clock
        self.later: list[tuple[int, float, bytes]] = []
        self.stalled = False
        self.closed = False

    def assignment(self) -> set[Any]:
        return set(self.parts)

    def end_offsets(self, partitions: list[Any], timeout_ms: int) -> dict[Any, int]:
        ends = {p: len(self.parts[p]) for p in partitions}
        for n, at, value in self.later:  # published once the reading has started
            self.parts[next(p for p in self.parts if p.partition == n)].append((at, value))
        return ends

    def offsets_for_times(self, times: dict[Any, int], timeout_ms: int) -> dict[Any, Any]:
        found = {}
        for p, ms in times.items():
            offset = next((i for i, (at, _) in enumerate(self.parts[p]) if at * 1000 >= ms), None)
            found[p] = None if offset is None else SimpleNamespace(offset=offset, timestamp=ms)
        return found

    def seek(self, partition: Any, offset: int) -> None:
        self.positions[partition] = offset

    def position(self, partition: Any) -> int:
        return self.positions[partition]

    def poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        if self.stalled:
            self.clock.advance(timeout_ms / 1000)
            return {}
        batch = {}
        for p, messages in self.parts.items():
            start = self.positions[p]
            records = [
                SimpleNamespace(offset=o, value=messages[o][1], timestamp=int(messages[o][0] * 1000))
                for o in range(start, min(start + 2, len(messages)))
            ]
            if records:
                batch[p] = records
                self.positions[p] = records[-1].offset + 1
        return batch

    def close(self, **_: Any) -> None:
        self.closed = True


def opener(consumer: FakeConsumer) -> Any:
    def open_consumer(kafka: KafkaSettings, topic_name: str, **options: Any) -> FakeConsumer:
        assert topic_name == next(iter(consumer.parts)).topic and options["client_id"]
        return consumer

    return open_consumer


def test_percentiles_are_nearest_rank_values() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    # p50: rank ceil(0.50 * 20) = 10; p95: rank ceil(19.0) = 19; p99: rank ceil(19.8) = 20
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (10.0, 19.0, 20.0)
    assert percentile([7.0], 99) == 7.0
    # 1, 2, 3, 4, 100: p50 rank ceil(2.5) = 3 -> 3; p95 rank ceil(4.75) = 5 -> 100
    assert (percentile([1.0, 2.0, 3.0, 4.0, 100.0], 50), percentile([1.0, 2.0, 3.0, 4.0, 100.0], 95)) == (3.0, 100.0)


def test_latency_per_minute_and_version_with_errors_by_status_class() -> None:
    minute = 1_899_999_960.0  # a whole minute
    first = [serving_payload("m", "2", ms) for ms in (5.0, 1.0, 3.0, 2.0)] + [serving_payload("m", "2", 100.0, 503)]
    events = [Event(minute + i, p) for i, p in enumerate(first)]
    events += [
        Event(minute + 61, serving_payload("m", "2", 7.0, 422)),
        Event(minute + 62, serving_payload("m", "2", 9.0)),
    ]
    events += [
        Event(minute + 5, serving_payload("m", "10", 4.0)),
        Event(minute + 5, serving_payload("other", "1", 1.0)),
    ]
    by_version = latency_by_minute(events, "m")
    assert list(by_version) == [("m", "2"), ("m", "10")], "one model; versions in number order"
    one, two = by_version[("m", "2")]
    # minute one: 1, 2, 3, 5, 100 -> p50 rank 3 = 3, p95 and p99 rank 5 = 100
    assert (one.minute, one.requests, one.p50_ms, one.p95_ms, one.p99_ms) == (minute, 5, 3.0, 100.0, 100.0)
    assert one.by_status_class == {"2xx": 4, "5xx": 1} and one.errors == 1
    # minute two: 7, 9 -> p50 rank 1 = 7, p95 rank 2 = 9
    assert (two.minute, two.requests, two.p50_ms, two.p95_ms) == (minute + 60, 2, 7.0, 9.0)
    assert two.by_status_class == {"2xx": 1, "4xx": 1} and two.errors == 1
    assert set(latency_by_minute(events)) == {("m", "2"), ("m", "10"), ("other", "1")}


def test_drift_series_in_window_order_with_recomputed_windows_once() -> None:
    t0 = 1_899_990_000.0
    events = [
        Event(t0 + 200, drift_payload("m", "3", t0 + 120, {"b": 0.5, "a": 0.1})),
        Event(t0 + 100, drift_payload("m", "3", t0, {"a": 0.05, "b": None})),
        Event(t0 + 150, drift_payload("m", "3", t0 + 60, {"a": 0.3, "b": 0.01})),
        # the first window again, recomputed after a restart: the last message counts
        Event(t0 + 300, drift_payload("m", "3", t0, {"a": 0.06, "b": None})),
        Event(t0 + 100, drift_payload("m", "9", t0, {"a": 0.0})),
        Event(t0 + 100, drift_payload("other", "1", t0, {"a": 9.0})),
    ]
    series = drift_series(events, "m")
    assert list(series) == [("m", "3"), ("m", "9")]
    three = series[("m", "3")]
    assert [(start - t0, rows, drifted) for start, _, rows, drifted in three.windows] == [
        (0, 120, False),
        (60, 120, True),
        (120, 120, True),
    ]
    assert list(three.features) == ["a", "b"]
    assert [(p.window_start - t0, p.psi, p.drifted) for p in three.features["a"]] == [
        (0, 0.06, False),
        (60, 0.3, True),
        (120, 0.1, False),
    ]
    assert [p.psi for p in three.features["b"]] == [None, 0.01, 0.5]
    assert three.psi_threshold == 0.25


def test_the_psi_chart_marks_the_threshold_and_the_drifted_windows() -> None:
    t0 = NOW - 3600
    points = drift_series(
        [Event(t0, drift_payload("m", "1", t0 + 60 * i, {"a": v})) for i, v in enumerate([0.1, 0.4, None, 0.3])]
    )
    svg = psi_svg("a", points[("m", "1")].features["a"], 0.25, NOW - 6 * 3600, NOW)
    assert svg.count('stroke-dasharray="4 3"') == 1, "the threshold line"
    assert svg.count('fill="#d62728"') == 2, "two drifted windows marked"
    assert svg.count("<circle") == 3, "the window without the feature has no point"
    assert svg.count("<polyline") == 1, "... and breaks the line (a lone point after the break is a marker only)"


def test_malformed_messages_are_skipped_and_counted() -> None:
    good = message(DRIFT, drift_payload("m", "1", NOW - 600, {"a": 0.1}), NOW - 500)
    assert parse_message(good, DRIFT) is not None
    bad = [
        None,  # a tombstone
        b"\xff\xfe not json",
        b"[1, 2]",
        message(SERVING_METRICS, serving_payload("m", "1", 1.0), NOW - 500),  # another topic's schema
        json.dumps({**json.loads(good), "payload": {"model_name": "m"}}).encode(),  # invalid payload
    ]
    assert all(parse_message(value, DRIFT) is None for value in bad)

    clock = FakeClock(wall=NOW)
    consumer = FakeConsumer(DRIFT.name, [[(NOW - 400, v) for v in [good, *bad, good]]], clock)
    read = read_since(KAFKA, DRIFT, NOW - 3600, max_messages=100, clock=clock, open_consumer=opener(consumer))
    assert (len(read.events), read.malformed, read.skipped, read.timed_out, read.error) == (2, 5, 0, False, None)
    assert consumer.closed


def test_reading_starts_at_the_time_and_stops_at_the_end_offsets() -> None:
    clock = FakeClock(wall=NOW)

    def payload(n: int) -> bytes:
        return message(SERVING_METRICS, serving_payload("m", "1", float(n)), NOW - 1000 + n)

    old = [(NOW - 7200 + n, payload(1000 + n)) for n in range(3)]
    consumer = FakeConsumer(
        SERVING_METRICS.name,
        [[*old, *((NOW - 900 + n, payload(n)) for n in range(5))], [(NOW - 800, payload(9))], []],
        clock,
    )
    consumer.later = [(0, NOW - 1, payload(99))]
    read = read_since(KAFKA, SERVING_METRICS, NOW - 3600, max_messages=100, clock=clock, open_consumer=opener(consumer))
    assert sorted(e.payload["latency_ms"] for e in read.events) == [0.0, 1.0, 2.0, 3.0, 4.0, 9.0]
    assert [e.time for e in read.events] == sorted(e.time for e in read.events)
    assert clock.sleeps == [], "no sleeps"


def test_the_cap_keeps_the_newest_messages_and_says_how_many_were_left_out() -> None:
    assert capped_starts({"a": 0, "b": 10}, {"a": 60, "b": 50}, 50) == ({"a": 30, "b": 30}, 50)
    assert capped_starts({"a": 0}, {"a": 5}, 50) == ({"a": 0}, 0)

    clock = FakeClock(wall=NOW)
    values = [
        (NOW - 600 + n, message(SERVING_METRICS, serving_payload("m", "1", float(n)), NOW - 600 + n)) for n in range(10)
    ]
    consumer = FakeConsumer(SERVING_METRICS.name, [values], clock)
    read = read_since(KAFKA, SERVING_METRICS, NOW - 3600, max_messages=4, clock=clock, open_consumer=opener(consumer))
    assert [e.payload["latency_ms"] for e in read.events] == [6.0, 7.0, 8.0, 9.0] and read.skipped == 6


def test_the_deadline_ends_a_reading_that_gets_no_answer() -> None:
    clock = FakeClock(wall=NOW)
    value = message(DRIFT, drift_payload("m", "1", NOW - 600, {"a": 0.1}), NOW - 500)
    consumer = FakeConsumer(DRIFT.name, [[(NOW - 500, value)]], clock)
    consumer.stalled = True
    read = read_since(
        KAFKA, DRIFT, NOW - 3600, max_messages=10, timeout_s=3, clock=clock, open_consumer=opener(consumer)
    )
    assert read.timed_out and read.events == [] and clock.mono == pytest.approx(103.0) and clock.sleeps == []


def test_an_unreadable_topic_is_an_error_in_the_result() -> None:
    def missing(kafka: KafkaSettings, topic_name: str, **_: Any) -> Any:
        raise LookupError(f"topic {topic_name!r} does not exist")

    read = read_since(KAFKA, DRIFT, NOW - 3600, max_messages=10, clock=FakeClock(wall=NOW), open_consumer=missing)
    assert read.error and "does not exist" in read.error and read.events == []


def fake_reader(drift: list[Event], serving: list[Event], **marks: Any) -> Any:
    asked: list[tuple[str, float, int]] = []

    def read(kafka: KafkaSettings, topic: Topic, since: float, *, max_messages: int, **_: Any) -> TopicRead:
        asked.append((topic.name, since, max_messages))
        events = drift if topic == DRIFT else serving
        return TopicRead(topic.name, since, list(events), **marks.get(topic.name, {}))

    read.asked = asked  # type: ignore[attr-defined]
    return read


def test_the_page_shows_drift_and_latency_per_model_version() -> None:
    t0 = NOW - 1800
    drift = [
        Event(t0 + 60 * i, drift_payload("m", "3", t0 + 60 * i, {"x1": v, "color": 0.01}))
        for i, v in enumerate([0.1, 0.5])
    ]
    serving = [Event(t0 + i, serving_payload("m", "3", float(i + 1))) for i in range(4)]
    serving.append(Event(t0, serving_payload("n", "1", 2.0)))
    reader = fake_reader(drift, serving)
    page = monitoring_page(KAFKA, model="m", hours=2, clock=FakeClock(wall=NOW), read=reader)
    assert reader.asked == [(DRIFT.name, NOW - 7200, DRIFT_CAP), (SERVING_METRICS.name, NOW - 7200, SERVING_CAP)]
    assert "<h3>version 3</h3>" in page and "2 windows, 1 drifted (PSI threshold 0.25" in page
    assert page.count('aria-label="PSI of') == 2, "one chart per feature"
    drift_table = page[page.index('<table class="drift">') : page.index("</table>")]
    assert re.findall(r"<th>(.*?)</th>", drift_table) == ["window start (UTC)", "rows", "color", "x1"]
    latency_table = page[page.index('<table class="latency">') :]
    # 4 requests of 1, 2, 3, 4 ms: p50 rank 2 = 2, p95 and p99 rank 4 = 4; all 2xx
    assert "<td>4</td><td>2</td><td>4</td><td>4</td><td>4</td></tr>" in latency_table
    assert "<h2>n</h2>" not in page and 'href="?model=n&amp;hours=2"' in page, "another model: a link only"


def test_empty_topics_and_reading_troubles_are_said_on_the_page() -> None:
    page = monitoring_page(KAFKA, clock=FakeClock(wall=NOW), read=fake_reader([], []))
    assert "the topics are empty" in page and "<svg" not in page
    marks = {
        DRIFT.name: {"error": "KafkaTimeoutError: no broker"},
        SERVING_METRICS.name: {"malformed": 3, "skipped": 1200, "timed_out": True},
    }
    page = monitoring_page(KAFKA, hours=1, clock=FakeClock(wall=NOW), read=fake_reader([], [], **marks))
    assert "could not be read: KafkaTimeoutError: no broker" in page
    assert "3 malformed messages skipped" in page
    assert f"more than {SERVING_CAP} messages in the period; the 1200 oldest were not read" in page
    assert "deadline came first" in page
    with pytest.raises(ValueError, match="hours"):
        monitoring_page(KAFKA, hours=49, read=fake_reader([], []))


def test_names_from_the_topics_and_the_request_are_escaped() -> None:
    t0 = NOW - 600
    drift = [Event(t0, drift_payload(HOSTILE, HOSTILE, t0, {HOSTILE: 0.9}))]
    serving = [Event(t0, serving_payload(HOSTILE, HOSTILE, 1.0))]
    for model in (None, HOSTILE):
        page = monitoring_page(KAFKA, model=model, clock=FakeClock(wall=NOW), read=fake_reader(drift, serving))
        assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
        assert "<h3>version &lt;script&gt;" in page
    page = monitoring_page(KAFKA, model=HOSTILE, clock=FakeClock(wall=NOW), read=fake_reader([], []))
    assert "<script>" not in page and "Nothing from this model in the period" in page
