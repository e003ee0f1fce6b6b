"""bench.b9_scale's pure parts: the process classifier (psutil-like stand-ins), the synthetic chunks, the peak
bookkeeping, and the ratios and notes computed from per-size results (no services, no run-all)."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench import b9_scale
from bench.b9_scale import (
    CLASSES,
    PeakTracker,
    chunk_sizes,
    classify,
    dataset_columns,
    parse_rows,
    scale_summary,
    side_by_side,
    stage_at,
    synthetic_chunk,
)

DRIVER = 100


@dataclass
class FakeProcess:
    """What classify() reads from a psutil.Process."""

    pid: int
    title: str = ""  # the kernel's name (15 characters at most on Linux)
    arguments: list[str] = field(default_factory=list)

    def name(self) -> str:
        return self.title

    def cmdline(self) -> list[str]:
        return self.arguments


@pytest.mark.parametrize(
    ("process", "kind"),
    [
        (FakeProcess(DRIVER, "python", ["/venv/bin/python", "-m", "ml", "run-all"]), "driver"),
        (
            FakeProcess(7, "java", ["/usr/lib/jvm/bin/java", "-cp", "x", "org.apache.spark.deploy.SparkSubmit", "job"]),
            "spark_driver",
        ),
        (FakeProcess(8, "java", ["java", "-jar", "something-else.jar"]), "other"),
        (FakeProcess(9, "python3", ["python3", "/repo/ml/preprocess/job.py", "--dataset", "d"]), "spark_python"),
        (FakeProcess(10, "python3", ["python3", "-m", "pyspark.daemon"]), "spark_python"),
        (FakeProcess(11, "ray::ImplicitFu", ["ray::ImplicitFunc.train"]), "ray_trial"),
        (FakeProcess(12, "ray::_Inner", ["ray::_Inner.train()"]), "ray_trial"),
        (FakeProcess(13, "ray::TrainContr", ["ray::TrainController.run"]), "ray_trial"),
        (
            FakeProcess(14, "ray::RayTrainWo", ["ray::RayTrainWorker._RayTrainWorker__execute.get_next"]),
            "ray_train_worker",
        ),
        (FakeProcess(15, "ray::IDLE", ["ray::IDLE"]), "ray_idle"),
        (FakeProcess(16, "ray::_StatsActo", ["ray::_StatsActor"]), "ray_other"),
        (FakeProcess(17, "ray::RayTrainWo", []), "ray_train_worker"),  # cmdline unreadable: the kernel's name
        (
            FakeProcess(18, "raylet", ["/venv/lib/ray/core/src/ray/raylet/raylet", "--node_ip_address=127.0.0.1"]),
            "ray_system",
        ),
        (FakeProcess(19, "gcs_server", ["/venv/lib/ray/core/src/ray/gcs/gcs_server"]), "ray_system"),
        (FakeProcess(20, "python", ["python", "/venv/lib/ray/dashboard/agent.py", "--port=1"]), "ray_system"),
        (FakeProcess(21, "python", ["python", "/venv/lib/ray/_private/log_monitor.py"]), "ray_system"),
        (FakeProcess(22, "python", ["python", "/venv/lib/ray/_private/workers/default_worker.py"]), "ray_idle"),
        (FakeProcess(23, "bash", ["bash", "-c", "true"]), "other"),
    ],
)
def test_classify_names_each_kind_of_process(process: FakeProcess, kind: str) -> None:
    assert classify(process, DRIVER) == kind


def test_every_kind_classify_returns_is_listed() -> None:
    assert {"driver", "spark_driver", "ray_trial", "ray_train_worker", "other"} <= set(b9_scale.KINDS)
    assert set(b9_scale.WORKER_KINDS) <= set(b9_scale.KINDS)


def test_synthetic_chunk_has_30_features_and_a_3_class_target() -> None:
    import pyarrow as pa

    table = synthetic_chunk(0, 3000)
    assert table.column_names == dataset_columns()
    assert table.num_rows == 3000
    features = [name for name in table.column_names if name != "target"]
    assert len(features) == 30
    numeric = [f for f in table.schema if pa.types.is_floating(f.type)]
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    assert len(numeric) == 26
    assert strings == ["cat0", "cat1", "cat2", "cat3", "target"]
    assert len(set(table.column("cat0").to_pylist())) == 10
    shares = Counter(table.column("target").to_pylist())
    assert set(shares) == set(CLASSES)
    assert all(0.2 < count / 3000 < 0.45 for count in shares.values())  # about balanced
    assert 0 < table.column("x00").null_count < 3000 * 0.05


def test_synthetic_chunk_is_deterministic_and_chunks_differ() -> None:
    assert synthetic_chunk(3, 500, seed=1).equals(synthetic_chunk(3, 500, seed=1))
    assert not synthetic_chunk(3, 500, seed=1).equals(synthetic_chunk(4, 500, seed=1))
    assert not synthetic_chunk(3, 500, seed=1).equals(synthetic_chunk(3, 500, seed=2))


def test_the_target_follows_the_rule_not_chance() -> None:
    """The class moves with the weighted numeric sum: a learnable table, not noise."""
    import numpy as np

    table = synthetic_chunk(0, 20000)
    standard = np.stack(
        [(table.column(f"x{i:02d}").to_numpy(zero_copy_only=False) - i) / (1 + i / 4) for i in range(26)], axis=1
    )
    score = np.nan_to_num(standard) @ np.asarray(b9_scale.WEIGHTS)
    labels = np.asarray([CLASSES.index(value) for value in table.column("target").to_pylist()])
    assert np.corrcoef(score, labels)[0, 1] > 0.5


def test_chunk_sizes_bound_each_part() -> None:
    assert chunk_sizes(1_200_000, 500_000) == [500_000, 500_000, 200_000]
    assert chunk_sizes(20_000, 500_000) == [20_000]
    assert max(chunk_sizes(20_000_000, 500_000)) == 500_000
    assert sum(chunk_sizes(20_000_001, 500_000)) == 20_000_001
    with pytest.raises(ValueError):
        chunk_sizes(0, 10)


def test_upload_dataset_writes_parquet_parts_one_chunk_at_a_time() -> None:
    import io

    import pyarrow.parquet as pq

    class Recorder:
        def __init__(self) -> None:
            self.puts: dict[str, bytes] = {}

        def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> None:
            self.puts[f"{Bucket}/{Key}"] = Body

    client = Recorder()
    written = b9_scale.upload_dataset(client, "raw", "bench-b9/d/", 2500, 1000, seed=0)
    assert written["parts"] == 3
    assert sorted(client.puts) == [f"raw/bench-b9/d/part-0000{i}.parquet" for i in range(3)]
    assert [pq.read_table(io.BytesIO(body)).num_rows for _, body in sorted(client.puts.items())] == [1000, 1000, 500]


def test_peak_tracker_keeps_the_largest_process_and_sum_per_kind() -> None:
    mib = 2**20
    tracker = PeakTracker()
    tracker.add([("driver", 100 * mib), ("ray_trial", 50 * mib), ("ray_trial", 60 * mib)], at_s=1.0)
    tracker.add([("driver", 300 * mib), ("ray_trial", 70 * mib)], at_s=5.0)
    tracker.add([("driver", 200 * mib)], at_s=9.0)
    out = tracker.to_dict({"ingest": 4.0, "preprocess": 8.0})
    assert out["samples"] == 3
    assert out["max_tree_mib"] == 370.0
    assert list(out["kinds"]) == ["driver", "ray_trial"]  # in KINDS order
    assert out["kinds"]["driver"]["max_process_mib"] == 300.0
    assert out["kinds"]["driver"]["max_process_at_s"] == 5.0
    assert out["kinds"]["driver"]["max_process_stage"] == "preprocess"
    assert out["kinds"]["ray_trial"] == {
        "max_process_mib": 70.0,
        "max_sum_mib": 110.0,
        "max_processes": 2,
        "max_process_at_s": 5.0,
        "max_process_stage": "preprocess",
    }


def test_stage_at_reads_the_stage_from_its_end_times() -> None:
    ends = {"ingest": 10.0, "preprocess": 40.0, "tune": 90.0}
    assert stage_at(3.0, ends) == "ingest"
    assert stage_at(10.0, ends) == "ingest"
    assert stage_at(41.0, ends) == "tune"
    assert stage_at(95.0, ends) == "after tune"
    assert stage_at(None, ends) is None
    assert stage_at(5.0, {}) is None


def test_log_watch_tells_the_split_path_and_stage_ends() -> None:
    watch = b9_scale.LogWatch(started=100.0)
    watch.feed("2026 INFO ml.pipeline: stage ingest done in 3.2 s\n", 104.5)
    watch.feed("INFO ml.data.source: splits of 300.5 MB (800000 + 100000 rows) streamed from S3 by the trials\n", 110)
    assert watch.stage_ends == {"ingest": 4.5}
    assert watch.split_path == "streamed"
    assert watch.driver_peak_after_mib == {}  # an older log line, without the peak
    watch.feed("INFO ml.pipeline: stage tune done in 30.0 s (peak RSS so far 1234 MiB)\n", 140)
    assert watch.stage_ends == {"ingest": 4.5, "tune": 40.0}
    assert watch.driver_peak_after_mib == {"tune": 1234.0}
    watch.feed("INFO ml.data.source: splits of 5.1 MB cached in memory (limit 64.0 MB)\n", 111)
    assert watch.split_path == "cached"


def test_run_all_command_passes_the_search_settings() -> None:
    args = argparse.Namespace(
        search_space="small",
        max_epochs=1,
        workers_per_trial=2,
        cache_mb=64.0,
        gpus_per_worker=None,
        no_register=True,
    )
    command = b9_scale.run_all_command("s3://raw/bench-b9/d/", "d", args)
    assert command[1:4] == ["-m", "ml", "run-all"]
    pairs = dict(zip(command[4::2], command[5::2], strict=False))
    assert pairs["--num-samples"] == "1" and pairs["--max-concurrent"] == "1"
    assert pairs["--workers-per-trial"] == "2" and pairs["--cache-mb"] == "64.0"
    assert command[-1] == "--no-register"
    assert "--gpus-per-worker" not in command


def _size(rows: int, wall: float, driver: float, trial: float, worker: float | None = None, **stages: float) -> Any:
    kinds: dict[str, dict[str, Any]] = {
        "driver": {"max_process_mib": driver, "max_process_stage": "ingest"},
        "spark_driver": {"max_process_mib": 900.0},
        "ray_trial": {"max_process_mib": trial},
    }
    if worker is not None:
        kinds["ray_train_worker"] = {"max_process_mib": worker}
    return {
        "rows": rows,
        "status": "ok",
        "wall_s": wall,
        "timings_s": stages or {"ingest": wall / 4, "tune": wall / 2},
        "rows_per_s": rows / wall,
        "split_path": "streamed",
        "memory": {"max_tree_mib": driver + trial, "kinds": kinds},
    }


def test_scale_summary_compares_the_largest_and_smallest_sizes() -> None:
    sizes = [
        _size(5_000_000, 250.0, driver=1500.0, trial=700.0),
        _size(1_000_000, 100.0, driver=1000.0, trial=600.0, worker=650.0),
        _size(20_000_000, 800.0, driver=3000.0, trial=500.0, worker=900.0),
    ]
    summary = scale_summary(sizes)
    assert summary["between_rows"] == [1_000_000, 20_000_000]
    assert summary["driver_memory_ratio"] == 3.0
    assert summary["worker_memory_ratio"] == round(900 / 650, 3)  # the larger of trial and Train worker, per size
    assert summary["ratio"] == 3.0  # the worse of the two
    assert summary["target"] == "<= 1.5"
    assert summary["spark_driver_memory_ratio"] == 1.0
    assert summary["wall_per_row_ratio"] == 0.4  # (800 / 20M) / (100 / 1M)
    assert summary["wall_per_row_target"] == "<= 1.0"
    assert summary["stage_time_per_row_ratios"] == {"ingest": 0.4, "tune": 0.4}


def test_scale_summary_leaves_out_failed_sizes_and_needs_two() -> None:
    failed = {**_size(20_000_000, 900.0, 9000.0, 500.0), "status": "failed (exit 1)"}
    summary = scale_summary([_size(1_000_000, 100.0, 1000.0, 600.0), failed])
    assert summary["ratio"] is None and summary["wall_per_row_ratio"] is None
    summary = scale_summary([_size(1_000_000, 100.0, 1000.0, 600.0), _size(5_000_000, 400.0, 1200.0, 600.0), failed])
    assert summary["between_rows"] == [1_000_000, 5_000_000]
    assert summary["driver_memory_ratio"] == 1.2


def test_notes_say_where_the_driver_peak_came_from_and_what_failed() -> None:
    sizes = [_size(1_000_000, 100.0, 1000.0, 600.0), _size(20_000_000, 800.0, 3000.0, 600.0)]
    sizes.append({"rows": 50_000_000, "status": "timed out after 7200 s", "wall_s": 7200.0, "memory": {}})
    text = " ".join(b9_scale.notes(sizes, scale_summary(sizes), ray_address=None))
    assert "grows with rows (3.0x" in text and "during ingest" in text
    assert "did not complete" in text and "50000000" in text
    remote = " ".join(b9_scale.notes(sizes, scale_summary(sizes), ray_address="ray://head:10001"))
    assert "not in the sampled tree" in remote


def test_side_by_side_has_one_row_per_size() -> None:
    rows = side_by_side([_size(1_000_000, 100.0, 1000.0, 600.0, ingest=10.0, tune=50.0)])
    assert rows[0]["rows"] == 1_000_000
    assert rows[0]["ingest_s"] == 10.0 and rows[0]["register_s"] is None
    assert rows[0]["driver_peak_mib"] == 1000.0 and rows[0]["ray_train_worker_peak_mib"] is None


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("1000000,5000000,20000000", [1_000_000, 5_000_000, 20_000_000]),
        ("20k, 1M,2.5m", [20_000, 1_000_000, 2_500_000]),
    ],
)
def test_parse_rows(text: str, sizes: list[int]) -> None:
    assert parse_rows(text) == sizes


def test_parse_rows_refuses_nothing_or_zero() -> None:
    for text in ("", "0", "5,-1"):
        with pytest.raises(ValueError):
            parse_rows(text)


def test_help_runs_without_services(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        b9_scale.main(["--help"], settings=None)  # type: ignore[arg-type]
    assert exited.value.code == 0
    assert "peak RSS" in capsys.readouterr().out


_FAKE_RUN_ALL = """
import json, sys, time
print("INFO ml.pipeline: stage ingest done in 0.1 s", file=sys.stderr, flush=True)
print("INFO ml.data.source: splits of 5.0 MB cached in memory (limit 64.0 MB)", file=sys.stderr, flush=True)
time.sleep(0.5)
print("INFO ml.pipeline: stage tune done in 0.5 s", file=sys.stderr, flush=True)
print(json.dumps({"timings_s": {"ingest": 0.1, "tune": 0.5}, "total_s": 0.6, "rows": 900, "num_trials": 1}))
"""


def _run_with(monkeypatch: pytest.MonkeyPatch, script: str, timeout_s: float) -> dict[str, Any]:
    import sys
    from types import SimpleNamespace

    monkeypatch.setattr(b9_scale, "run_all_command", lambda *_: [sys.executable, "-c", script])
    settings = SimpleNamespace(to_env=dict)
    args = argparse.Namespace(interval_s=0.05, timeout_s=timeout_s)
    return b9_scale.run_size(settings, 1000, "s3://raw/bench-b9/d/", "d", args)  # type: ignore[arg-type]


def test_run_size_reads_the_summary_the_log_and_samples_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    size = _run_with(monkeypatch, _FAKE_RUN_ALL, timeout_s=60)
    assert size["status"] == "ok"
    assert size["timings_s"] == {"ingest": 0.1, "tune": 0.5}
    assert size["split_path"] == "cached"
    assert set(size["stage_ends_s"]) == {"ingest", "tune"}
    assert size["memory"]["samples"] >= 1
    assert size["memory"]["kinds"]["driver"]["max_process_mib"] > 0
    assert size["feature_rows"] == 900 and size["rows_per_s"] > 0


def test_run_size_ends_a_run_past_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    size = _run_with(monkeypatch, "import time; time.sleep(120)", timeout_s=1)
    assert size["status"] == "timed out after 1 s"
    assert size["wall_s"] < 60
    assert "timings_s" not in size
