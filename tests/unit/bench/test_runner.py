"""bench.__main__: which results file each benchmark writes, ids chosen case-insensitively, targets read from text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.__main__ import BENCHMARKS, Benchmark, airflow_for, main, meets, summary_table


def test_every_benchmark_has_a_results_file_of_its_own() -> None:
    names = [benchmark.results_name for benchmark in BENCHMARKS]

    assert len(names) == len(set(names))
    # B3b runs B3's module again, at 50M rows, into its own file, and tells the module so.
    b3b = next(b for b in BENCHMARKS if b.id == "B3b")
    assert b3b.name == "b3_spark_vs_pandas" and b3b.results_name != b3b.name
    for arguments in (b3b.quick, b3b.full):
        assert arguments[arguments.index("--report-as") + 1] == b3b.results_name
    assert b3b.full[b3b.full.index("--rows") + 1] == "50000000"


def test_ids_are_chosen_whatever_their_case(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "b3b,B11"])

    assert exit_info.value.code == 2
    assert "unknown benchmark(s) ['B11']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [(0.95, ">= 0.8 on 2 cores", True), (0.7, ">= 0.8", False), (1.2, "<= 1.15", False), (0.4, None, None)],
)
def test_meets_reads_the_first_bound(value: float, target: str | None, expected: bool | None) -> None:
    assert meets(value, target) is expected


def test_the_table_has_a_line_per_ratio_with_its_target_and_says_which_failed() -> None:
    entries = [
        {"id": "B8", "status": "ok", "ratio": 6.3, "target": ">= 3", "meets_target": True}
        | {"http_ratio": 0.44, "http_target": ">= 0.7", "batch_arrow_ratio": None, "batch_arrow_target": ">= 0.5"},
        {"id": "B3b", "status": "failed (exit 1)"},
        {"id": "B5", "status": "ok", "ratio": 0.66, "target": None},
    ]

    lines = summary_table(entries).splitlines()[2:]

    assert [line.split()[:4] for line in lines] == [
        ["B8", "ratio", "6.300", "yes"],
        ["B8", "http_ratio", "0.440", "NO"],
        ["B8", "batch_arrow_ratio", "-", "-"],
        ["B3b", "failed", "(exit", "1)"],
        ["B5", "ratio", "0.660", "-"],
    ]
    assert lines[1].endswith(">= 0.7") and lines[4].endswith("none")


class FakeService:
    def __init__(self, name: str, running: bool) -> None:
        self.name, self.running, self.calls = name, running, []

    def running_pid(self, paths: object) -> int | None:
        return 1234 if self.running else None

    def start(self, paths: object, env: dict[str, str]) -> str:
        self.calls.append("start")
        self.running = True
        return "started"

    def stop(self, paths: object) -> str:
        self.calls.append("stop")
        self.running = False
        return "stopped"


def fake_profile(monkeypatch: pytest.MonkeyPatch, *services: FakeService) -> None:
    import stack.config
    import stack.profiles

    monkeypatch.setattr(stack.config, "stack_paths", lambda: "paths")
    monkeypatch.setattr(stack.config, "active_profile", lambda paths: "local")
    monkeypatch.setattr(stack.config, "stack_environment", lambda profile: {"MLOPS_STACK_PROFILE": profile})
    monkeypatch.setattr(stack.profiles, "profile_named", lambda name: SimpleNamespace(name=name, airflow=services))


def by_id(benchmark_id: str) -> Benchmark:
    return next(b for b in BENCHMARKS if b.id == benchmark_id)


def test_airflow_is_started_for_b7_only_and_stopped_after(monkeypatch: pytest.MonkeyPatch) -> None:
    airflow = FakeService("airflow", running=False)
    fake_profile(monkeypatch, airflow)
    with airflow_for(by_id("B3")) as running:
        assert running is False and airflow.calls == []
    with airflow_for(by_id("B7")) as running:
        assert running is True and airflow.calls == ["start"]
    assert airflow.calls == ["start", "stop"] and not airflow.running


def test_an_airflow_already_running_is_left_running(monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, api = FakeService("scheduler", running=True), FakeService("api-server", running=True)
    fake_profile(monkeypatch, scheduler, api)
    for benchmark_id in ("B3", "B7"):
        with airflow_for(by_id(benchmark_id)) as running:
            assert running is True
    assert scheduler.calls == api.calls == [] and scheduler.running and api.running


def test_airflow_is_stopped_when_the_benchmark_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    airflow = FakeService("airflow", running=False)
    fake_profile(monkeypatch, airflow)
    with pytest.raises(RuntimeError, match="B7 broke"), airflow_for(by_id("B7")):
        raise RuntimeError("B7 broke")
    assert airflow.calls == ["start", "stop"]
