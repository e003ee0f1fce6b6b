"""ml.report: the tuning report's page and plots from trial records, and how the trials are collected from MLflow (an
in-memory client here)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest

from ml.report import (
    PALETTE,
    TrialRecord,
    collect_trials,
    learning_curves_svg,
    parallel_coordinates_svg,
    render_report,
)

TRIALS = [
    TrialRecord(
        "trial_0",
        {"lr": "0.01", "optimizer": "adam", "hidden": "64"},
        {"val_accuracy": 0.9, "val_loss": 0.3},
        {"val_accuracy": [(1, 0.7), (2, 0.85), (3, 0.9)], "train_loss": [(1, 0.9), (2, 0.5), (3, 0.3)]},
    ),
    TrialRecord(
        "trial_1",
        {"lr": "0.1", "optimizer": "sgd", "hidden": "16"},
        {"val_accuracy": 0.6},
        {"val_accuracy": [(1, 0.6)]},  # stopped by ASHA after one epoch
    ),
    TrialRecord("<script>alert(1)</script>", {"lr": "0.05", "optimizer": "adam"}, {"val_accuracy": math.nan}),
]
PARENT = {"run_id": "abc123", "experiment_id": "1", "params": {}, "metrics": {}, "tags": {"mlops.dag_run_id": "r&d"}}


def svg(text: str) -> ET.Element:
    return ET.fromstring(text)


def points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in polyline.attrib["points"].split())]


NS = "{http://www.w3.org/2000/svg}"


def test_learning_curves_draw_a_line_and_markers_per_trial() -> None:
    root = svg(learning_curves_svg(TRIALS, "val_accuracy", width=640, height=300))
    lines = root.findall(f"{NS}polyline")
    assert [line.find(f"{NS}title").text for line in lines] == ["trial_0", "trial_1"]  # type: ignore[union-attr]
    assert len(root.findall(f"{NS}circle")) == 4  # one marker per point: a one-epoch trial is still visible
    first = points(lines[0])
    assert [x for x, _ in first] == sorted(x for x, _ in first)  # epochs left to right
    assert first[-1][1] < first[0][1]  # a higher accuracy is drawn higher (smaller y)
    for x, y in first + points(lines[1]):
        assert 40 <= x <= 600 and 40 <= y <= 260  # inside the padding
    assert "min 0.6, max 0.9; epochs 1-3" in root.find(f"{NS}text").text  # type: ignore[union-attr]
    assert lines[0].attrib["stroke"] == PALETTE[0] and lines[1].attrib["stroke"] == PALETTE[1]


def test_learning_curves_without_values_say_so() -> None:
    assert learning_curves_svg(TRIALS, "val_rmse") == "<p>No per-epoch values of val_rmse.</p>"
    assert "&lt;b&gt;" in learning_curves_svg([], "<b>")


def test_parallel_coordinates_put_every_trial_on_every_axis() -> None:
    root = svg(parallel_coordinates_svg(TRIALS, "val_accuracy", width=760, height=320))
    axes = [text.text for text in root.findall(f"{NS}text")]
    assert axes == ["hidden", "lr", "optimizer", "val_accuracy"]  # parameters sorted, the metric last
    lines = root.findall(f"{NS}polyline")
    assert len(lines) == 3 and all(len(points(line)) == 4 for line in lines)
    lr_y = [points(line)[1][1] for line in lines]
    assert lr_y[1] < lr_y[2] < lr_y[0]  # numeric: lr 0.1 highest, 0.01 lowest
    optimizer_y = [points(line)[2][1] for line in lines]
    assert optimizer_y[0] == optimizer_y[2] != optimizer_y[1]  # categorical: by rank
    metric_y = [points(line)[3][1] for line in lines]
    assert metric_y[2] == pytest.approx((320 - 50 + 50) / 2)  # NaN in the middle, not off the plot
    assert lines[0].attrib["stroke"] == PALETTE[-1] and lines[1].attrib["stroke"] == PALETTE[0]  # best vs worst


def test_parallel_coordinates_without_trials() -> None:
    assert parallel_coordinates_svg([], "val_accuracy") == "<p>No trials.</p>"


def test_equal_values_do_not_divide_by_zero() -> None:
    same = [TrialRecord(f"t{i}", {"lr": "0.1"}, {"m": 0.5}, {"m": [(1, 0.5)]}) for i in range(2)]
    assert "polyline" in parallel_coordinates_svg(same, "m") and "polyline" in learning_curves_svg(same, "m")


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)
        self._in_cell = tag in ("td", "th")
        if self._in_cell:
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data


def test_render_report_is_one_self_contained_page() -> None:
    page = render_report("Tuning <run>", PARENT, TRIALS, "val_accuracy")
    parsed = Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags  # no scripts: the trial name with a script tag is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Tuning &lt;run&gt;</title>" in page and "abc123" in page and "3 trials" in page
    assert "<li><b>mlops.dag_run_id</b>: r&amp;d</li>" in page
    header, rows = parsed.cells[:6], parsed.cells[6:]
    assert header == ["trial", "hidden", "lr", "optimizer", "val_accuracy", "val_loss"]
    assert rows[:6] == ["trial_0", "64", "0.01", "adam", "0.9", "0.3"]
    assert rows[6:12] == ["trial_1", "16", "0.1", "sgd", "0.6", ""]  # a missing metric is an empty cell
    assert rows[12:] == ["<script>alert(1)</script>", "", "0.05", "adam", "nan", ""]  # as text, not markup
    assert page.count("<svg") == 2 and "http" not in re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", page)


def test_render_report_without_a_tuning_run() -> None:
    page = render_report("Report", None, [], "val_accuracy")
    assert "No tuning run found for this DAG run (yet)." in page and "<table" not in page


# --- collect_trials --------------------------------------------------------------------------------------------------


def run(run_id: str, name: str | None, *, params: Any = None, metrics: Any = None, tags: Any = None) -> Any:
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, run_name=name, experiment_id="7"),
        data=SimpleNamespace(params=params or {}, metrics=metrics or {}, tags=tags or {}),
    )


class FakeTracking:
    def __init__(self, parents: list[Any], children: list[Any], history: dict[tuple[str, str], list[Any]]) -> None:
        self.parents, self.children, self.history = parents, children, history
        self.queries: list[tuple[Any, ...]] = []

    def search_experiments(self) -> list[Any]:
        return [SimpleNamespace(experiment_id="1"), SimpleNamespace(experiment_id="7")]

    def search_runs(self, experiments: list[str], query: str, **kwargs: Any) -> list[Any]:
        self.queries.append((experiments, query, kwargs))
        return self.parents if "mlops.kind" in query else self.children

    def get_metric_history(self, run_id: str, key: str) -> list[Any]:
        return self.history[(run_id, key)]


def step(number: int, value: float) -> Any:
    return SimpleNamespace(step=number, value=value)


def test_collect_trials_reads_the_parent_its_trials_and_their_curves() -> None:
    parent = run("p1", "search", tags={"mlops.dag_run_id": "run'1", "mlflow.user": "x", "dataset": "iris"})
    children = [
        run("c2", "trial_b", params={"lr": "0.1"}, metrics={"val_loss": 0.4, "test_accuracy": 0.8}),
        run("c1", None, params={"lr": "0.01"}, metrics={"val_loss": 0.2, "train_loss": 0.1}),
    ]
    history = {
        ("c2", "val_loss"): [step(2, 0.4), step(1, 0.6)],
        ("c1", "val_loss"): [step(1, 0.2)],
        ("c1", "train_loss"): [step(1, 0.1)],
    }
    tracking = FakeTracking([parent], children, history)
    summary, trials = collect_trials(tracking, "run'1")
    assert summary == {
        "run_id": "p1",
        "experiment_id": "7",
        "params": {},
        "metrics": {},
        "tags": {"mlops.dag_run_id": "run'1", "dataset": "iris"},  # MLflow's own tags left out
    }
    assert [t.name for t in trials] == ["c1", "trial_b"]  # sorted by name; a run without one is named by its id
    assert trials[1].curves == {"val_loss": [(1, 0.6), (2, 0.4)]}  # by epoch; test_* metrics have no curve
    assert trials[0].curves == {"val_loss": [(1, 0.2)], "train_loss": [(1, 0.1)]}
    (experiments, parent_query, options), (child_experiments, child_query, _) = tracking.queries
    assert experiments == ["1", "7"] and child_experiments == ["7"]
    assert parent_query == "tags.`mlops.dag_run_id` = \"run'1\" and tags.`mlops.kind` = 'tune_search'"
    assert options["max_results"] == 1 and options["order_by"] == ["attributes.start_time DESC"]
    assert child_query == "tags.mlflow.parentRunId = 'p1'"


def test_collect_trials_without_a_search() -> None:
    assert collect_trials(FakeTracking([], [], {}), "nothing") == (None, [])
