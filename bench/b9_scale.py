"""B9: the whole pipeline at several sizes: wall time per stage and peak memory per process, side by side.

`python -m ml run-all` (ml.pipeline.run_pipeline: ingest -> spark-submit preprocessing -> Ray Tune -> evaluate ->
register) runs once per size (default 1M, 5M and 20M rows), one size after another, each in a fresh interpreter on a
dataset of its own. The data is synthetic: 26 numeric float32 columns (1% nulls), 4 categorical string columns of 10
levels each, and a 3-class `target` that a linear rule of the numeric values plus the categories' effects plus noise
decides. It is generated chunk by chunk with numpy (the generator holds one chunk) and written to
`s3://<raw bucket>/bench-b9/<dataset>/part-NNNNN.parquet`; generating and uploading are not timed.

The search is the smallest that runs every stage: `--search-space small`, 1 sample, 1 epoch, 1 trial at a time, and a
small `--cache-mb` (64 by default), so that the larger sizes take the streamed path (each trial reads its splits from
S3 block by block); which path a size took is read from run-all's log (`split_path`).

Per size: run-all's stage timings (ingest, preprocess, tune, evaluate, register), its wall time around the process
(start-up and imports included), rows/s, and the peak RSS of each kind of process, sampled every `--interval-s` from
run-all's process tree by a thread in this process: the run-all driver itself (it runs ingest, the Tune driver and
evaluation, as an Airflow task's process would), the Spark driver JVM (spark-submit's `java`) and the job's Python,
Ray trial processes (`ray::ImplicitFunc`, ...), Ray Train workers (`ray::RayTrainWorker`), Ray's own servers, and
the rest. For each kind: the largest single process and the largest sum over the kind's processes in one sample,
with the stage that was running when the single-process peak was seen.

Ratios, between the largest and the smallest size that completed (DESIGN.md: memory at 20M <= 1.5x of 1M, wall at
most linear): peak driver RSS and peak worker RSS (trial or Train worker, whichever is larger), target <= 1.5 each
(`ratio` is the larger of the two); wall time per row, target <= 1.0.

Each size's raw objects, lake folders, MLflow experiment and registered model are deleted afterwards (`--keep` leaves
them). Needs the stack (S3, MLflow, Kafka); not Airflow.

    python -m stack run -- .venv/bin/python -m bench.b9_scale --rows 20000,100000     # a quick check (minutes)
    python -m stack run -- .venv/bin/python -m bench.b9_scale                         # 1M, 5M, 20M rows
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import argument_parser, benchmark_settings, delete_run_outputs, ratio, report
from ml.settings import Settings

log = logging.getLogger("bench.b9")

TARGET = "target"
TASK = "classification"
STAGES = ("ingest", "preprocess", "tune", "evaluate", "register")
RAW_PREFIX = "bench-b9"  # in the raw bucket: bench-b9/<dataset>/part-NNNNN.parquet
MEMORY_TARGET = "<= 1.5"
WALL_TARGET = "<= 1.0"

# The synthetic table: 26 numeric + 4 categorical features and a 3-class target.
NUMERIC = 26
CATEGORICAL = 4
LEVELS = 10
CLASSES = ("low", "mid", "high")
# The label rule: 0.8 x (numeric values' weighted sum, unit variance) + the categories' effects + N(0, 0.5) noise,
# cut at about its tertiles (the sum has mean ~-0.13 and std ~1.1), so that the classes come out roughly balanced.
_RAW_WEIGHTS = [(-1.0) ** i / (1.0 + i / 8) for i in range(NUMERIC)]
WEIGHTS = [0.8 * w / sum(v * v for v in _RAW_WEIGHTS) ** 0.5 for w in _RAW_WEIGHTS]
EFFECTS = [[0.6 * ((k % 3) - 1) / (1 + j) for k in range(LEVELS)] for j in range(CATEGORICAL)]
THRESHOLDS = (-0.6, 0.35)
NOISE = 0.5

# Process kinds, in the report's order. "worker" ratios use the Ray trial and Train worker kinds.
KINDS = (
    "driver",
    "spark_driver",
    "spark_python",
    "ray_trial",
    "ray_train_worker",
    "ray_idle",
    "ray_other",
    "ray_system",
    "other",
)
WORKER_KINDS = ("ray_trial", "ray_train_worker")
# A trial's process titles: a function trainable (ImplicitFunc, this pipeline's), a class one (_Inner), and a
# data-parallel trial's Train controller (its Train workers are RayTrainWorker).
TRIAL_TITLES = ("ImplicitFunc", "_Inner", "FunctionTrainable", "TrainController")
RAY_SERVERS = ("raylet", "gcs_server", "plasma_store")
RAY_SCRIPTS = ("ray/dashboard", "ray/_private", "ray/autoscaler", "ray/util/client", "ray_client_server")

# run-all's log lines that the benchmark reads: which path the splits took (ml.data.source.training_data), and when
# each stage ended (ml.pipeline), to tell which stage a memory peak fell in.
_CACHED = re.compile(r"splits of [0-9.]+ MB cached in memory")
_STREAMED = re.compile(r"splits of [0-9.]+ MB .* streamed from S3")
_STAGE_DONE = re.compile(r"stage (\w+) done in [\d.]+ s(?: \(peak RSS so far ([\d.]+) MiB\))?")


# ---------------------------------------------------------------------------------------------------------- data


def dataset_columns() -> list[str]:
    """The raw table's columns, in order: x00..x25, cat0..cat3, target."""
    return [*(f"x{i:02d}" for i in range(NUMERIC)), *(f"cat{j}" for j in range(CATEGORICAL)), TARGET]


def synthetic_chunk(index: int, rows: int, seed: int = 0, null_share: float = 0.01) -> Any:
    """Chunk `index` of the synthetic table as a pyarrow Table of `rows` rows: the same (seed, index, rows) give the
    same values, so a size's data does not depend on what ran before it."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng([seed, index])
    standard = rng.standard_normal((rows, NUMERIC), dtype=np.float32)
    score = standard @ np.asarray(WEIGHTS, dtype=np.float32)
    columns: dict[str, Any] = {}
    for i in range(NUMERIC):
        # Stored on scales and offsets of their own (what preprocessing standardises); the rule sees standard values.
        values = standard[:, i] * np.float32(1.0 + i / 4) + np.float32(i)
        columns[f"x{i:02d}"] = pa.array(values, mask=rng.random(rows) < null_share)
    for j in range(CATEGORICAL):
        picks = rng.integers(0, LEVELS, size=rows)
        score += np.asarray(EFFECTS[j], dtype=np.float32)[picks]
        columns[f"cat{j}"] = pa.array([f"c{j}_{k}" for k in range(LEVELS)]).take(pa.array(picks))
    score += rng.normal(scale=NOISE, size=rows).astype(np.float32)
    columns[TARGET] = pa.array(CLASSES).take(pa.array(np.digitize(score, THRESHOLDS)))
    return pa.table(columns)


def chunk_sizes(rows: int, chunk_rows: int) -> list[int]:
    """Rows per part: full chunks, then the rest."""
    if rows <= 0 or chunk_rows <= 0:
        raise ValueError(f"rows and chunk rows must be positive, not {rows} and {chunk_rows}")
    return [min(chunk_rows, rows - start) for start in range(0, rows, chunk_rows)]


def upload_dataset(client: Any, bucket: str, prefix: str, rows: int, chunk_rows: int, seed: int) -> dict[str, Any]:
    """Write the synthetic table as Parquet parts under s3://bucket/prefix, one chunk in memory at a time."""
    import pyarrow.parquet as pq

    written = 0
    sizes = chunk_sizes(rows, chunk_rows)
    for index, size in enumerate(sizes):
        buffer = io.BytesIO()
        pq.write_table(synthetic_chunk(index, size, seed), buffer)
        client.put_object(Bucket=bucket, Key=f"{prefix}part-{index:05d}.parquet", Body=buffer.getvalue())
        written += buffer.tell()
    return {"parts": len(sizes), "bytes": written}


# ------------------------------------------------------------------------------------------------------ processes


def classify(process: Any, driver_pid: int) -> str:
    """The kind of one process of run-all's tree (`process`: psutil.Process-like, with pid, name() and cmdline()).

    Ray names its workers through their process title (`ray::ImplicitFunc.train`, `ray::RayTrainWorker...`), which
    shows in cmdline(); name() is the kernel's 15-character copy of it, looked at when cmdline() is empty."""
    if process.pid == driver_pid:
        return "driver"
    name = process.name() or ""
    arguments = process.cmdline() or []
    text = " ".join(arguments) or name
    if text.startswith("ray::") or name.startswith("ray::"):
        from_name = not (arguments and text.startswith("ray::"))
        title = name if from_name else text

        def titled(word: str) -> bool:  # the kernel's name is cut at 15 characters: compare what is left of it
            return title.startswith(f"ray::{word}"[:15]) if from_name else title.startswith(f"ray::{word}")

        if titled("RayTrainWorker"):
            return "ray_train_worker"
        if titled("IDLE"):
            return "ray_idle"
        return "ray_trial" if any(titled(trial) for trial in TRIAL_TITLES) else "ray_other"
    if "ray/_private/workers/default_worker.py" in text:
        return "ray_idle"  # a worker that has not set its title yet
    program = Path(arguments[0]).name if arguments else name
    if program == "java" or name == "java":
        return "spark_driver" if "org.apache.spark.deploy.SparkSubmit" in text else "other"
    if "pyspark" in text or "ml/preprocess/job.py" in text:
        return "spark_python"  # the job's Python driver (under the JVM) and pyspark's Python workers
    if program in RAY_SERVERS or name in RAY_SERVERS or any(script in text for script in RAY_SCRIPTS):
        return "ray_system"
    return "other"


@dataclass
class KindPeak:
    """The largest RSS seen for one kind of process."""

    max_process_bytes: int = 0
    max_process_at_s: float | None = None  # seconds after the run started
    max_sum_bytes: int = 0
    max_processes: int = 0


@dataclass
class PeakTracker:
    """Peaks per kind over samples; each sample is the (kind, RSS bytes) of every process seen at one moment."""

    kinds: dict[str, KindPeak] = field(default_factory=dict)
    max_tree_bytes: int = 0
    samples: int = 0

    def add(self, readings: Iterable[tuple[str, int]], at_s: float) -> None:
        sums: dict[str, int] = collections.Counter()
        counts: dict[str, int] = collections.Counter()
        for kind, rss in readings:
            peak = self.kinds.setdefault(kind, KindPeak())
            if rss > peak.max_process_bytes:
                peak.max_process_bytes, peak.max_process_at_s = rss, round(at_s, 2)
            sums[kind] += rss
            counts[kind] += 1
        for kind, total in sums.items():
            peak = self.kinds[kind]
            peak.max_sum_bytes = max(peak.max_sum_bytes, total)
            peak.max_processes = max(peak.max_processes, counts[kind])
        self.max_tree_bytes = max(self.max_tree_bytes, sum(sums.values()))
        self.samples += 1

    def to_dict(self, stage_ends: dict[str, float] | None = None) -> dict[str, Any]:
        """MiB per kind (in KINDS order), with the stage of each single-process peak when `stage_ends` is given."""
        mib = 2**20
        kinds = {}
        for kind in sorted(self.kinds, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS)):
            peak = self.kinds[kind]
            kinds[kind] = {
                "max_process_mib": round(peak.max_process_bytes / mib, 1),
                "max_sum_mib": round(peak.max_sum_bytes / mib, 1),
                "max_processes": peak.max_processes,
                "max_process_at_s": peak.max_process_at_s,
                "max_process_stage": stage_at(peak.max_process_at_s, stage_ends or {}),
            }
        return {"samples": self.samples, "max_tree_mib": round(self.max_tree_bytes / mib, 1), "kinds": kinds}


def stage_at(at_s: float | None, stage_ends: dict[str, float]) -> str | None:
    """The stage running at `at_s` (seconds after the start): the first whose end, from run-all's log, is at or after
    it; past the last known end, "after <that stage>" (the exit, or a stage that never ended); None without a log."""
    if at_s is None or not stage_ends:
        return None
    ordered = sorted(stage_ends.items(), key=lambda item: item[1])
    for stage, ended in ordered:
        if at_s <= ended:
            return stage
    return f"after {ordered[-1][0]}"


def read_tree(root_pid: int) -> list[tuple[str, int]]:
    """(kind, RSS) of run-all and every descendant now; processes that end while being read are skipped."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    readings = []
    for process in processes:
        try:
            readings.append((classify(process, root_pid), process.memory_info().rss))
        except psutil.Error:  # ended, a zombie, or not ours to read
            continue
    return readings


@dataclass
class TreeSampler:
    """A thread that samples run-all's process tree every `interval_s` into a PeakTracker."""

    root_pid: int
    interval_s: float = 0.2
    tracker: PeakTracker = field(default_factory=PeakTracker)
    started: float = field(default_factory=time.perf_counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, name="b9-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            readings = read_tree(self.root_pid)
            if readings:
                self.tracker.add(readings, time.perf_counter() - self.started)
            self._stop.wait(self.interval_s)


# ---------------------------------------------------------------------------------------------------------- a run


@dataclass
class LogWatch:
    """What this benchmark reads from run-all's stderr (passed on to ours): the splits' path, the stages' end times,
    and the last lines (for a failure's report)."""

    started: float
    split_path: str | None = None
    split_line: str | None = None
    stage_ends: dict[str, float] = field(default_factory=dict)
    driver_peak_after_mib: dict[str, float] = field(default_factory=dict)  # run-all's own VmHWM per stage end
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))

    def feed(self, line: str, now: float) -> None:
        self.tail.append(line.rstrip())
        if _CACHED.search(line) or _STREAMED.search(line):
            self.split_path = "cached" if _CACHED.search(line) else "streamed"
            self.split_line = line.strip()
        found = _STAGE_DONE.search(line)
        if found:
            self.stage_ends[found.group(1)] = round(now - self.started, 2)
            if found.group(2):
                self.driver_peak_after_mib[found.group(1)] = float(found.group(2))

    def follow(self, stream: IO[str]) -> None:
        for line in stream:
            sys.stderr.write(line)
            self.feed(line, time.perf_counter())


def run_all_command(raw_uri: str, dataset: str, args: Any) -> list[str]:
    """`python -m ml run-all` with the benchmark's search settings."""
    options = {
        "--raw-uri": raw_uri,
        "--dataset": dataset,
        "--target": TARGET,
        "--task": TASK,
        "--run-name": f"b9-{dataset}",
        "--search-space": args.search_space,
        "--num-samples": "1",
        "--max-concurrent": "1",
        "--max-epochs": str(args.max_epochs),
        "--workers-per-trial": str(args.workers_per_trial),
        "--cache-mb": str(args.cache_mb),
    }
    command = [sys.executable, "-m", "ml", "run-all", *(part for option in options.items() for part in option)]
    if args.gpus_per_worker is not None:
        command += ["--gpus-per-worker", str(args.gpus_per_worker)]
    return [*command, "--no-register"] if args.no_register else command


def _stop_group(process: subprocess.Popen[str]) -> None:
    """End run-all and what it started (its own process group: Ray's servers, spark-submit), by its id."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def run_size(settings: Settings, rows: int, raw_uri: str, dataset: str, args: Any) -> dict[str, Any]:
    """run-all on one size, its process tree sampled; the result is a size's row of the report."""
    command = run_all_command(raw_uri, dataset, args)
    env = {**os.environ, **settings.to_env()}
    with tempfile.TemporaryFile("w+") as stdout:
        began = time.perf_counter()
        # A session of its own: on a timeout its whole group (Ray's servers, spark-submit) can be ended by its id.
        process = subprocess.Popen(
            command, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        watch = LogWatch(began)
        assert process.stderr is not None
        reader = threading.Thread(target=watch.follow, args=(process.stderr,), name="b9-log", daemon=True)
        reader.start()
        status = "ok"
        try:
            with TreeSampler(process.pid, args.interval_s, started=began) as sampler:
                try:
                    returncode = process.wait(timeout=args.timeout_s)
                    if returncode != 0:
                        status = f"failed (exit {returncode})"
                except subprocess.TimeoutExpired:
                    status = f"timed out after {args.timeout_s:.0f} s"
                wall = time.perf_counter() - began  # before the sampler's last sample and the clean-up
        finally:
            _stop_group(process)
        reader.join(timeout=30)
        stdout.seek(0)
        printed = stdout.read()
    result: dict[str, Any] = {
        "rows": rows,
        "dataset": dataset,
        "status": status,
        "wall_s": round(wall, 2),
        "split_path": watch.split_path,
        "split_log": watch.split_line,
        "stage_ends_s": watch.stage_ends,
        "driver_peak_after_stage_mib": watch.driver_peak_after_mib,
        "memory": sampler.tracker.to_dict(watch.stage_ends),
    }
    if status != "ok":
        result["log_tail"] = list(watch.tail)
        return result
    summary = json.loads(printed)
    timings = summary["timings_s"]
    result.update(
        timings_s=timings,
        sum_stages_s=summary["total_s"],
        outside_stages_s=round(wall - summary["total_s"], 2),
        rows_per_s=round(rows / wall, 1) if wall else None,
        stage_rows_per_s={stage: round(rows / s, 1) for stage, s in timings.items() if s},
        feature_rows=summary.get("rows"),
        num_trials=summary.get("num_trials"),
        test_metrics=summary.get("test_metrics"),
        baseline_test_metrics=summary.get("baseline_test_metrics"),
    )
    return result


# -------------------------------------------------------------------------------------------------------- summary


def peak_mib(size: dict[str, Any], kinds: Iterable[str], key: str = "max_process_mib") -> float | None:
    """The largest `key` of the given kinds in a size's memory record (None when none of them was seen)."""
    seen = size.get("memory", {}).get("kinds", {})
    values = [seen[kind][key] for kind in kinds if kind in seen]
    return max(values) if values else None


def _ratio_of(large: float | None, small: float | None) -> float | None:
    return ratio(large, small) if large is not None and small else None


def scale_summary(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios between the largest and the smallest size that completed: peak driver and worker RSS (target
    <= 1.5), wall time per row (<= 1.0), and per stage the time per row (where any non-linearity sits)."""
    done = sorted((s for s in sizes if s["status"] == "ok"), key=lambda s: s["rows"])
    summary: dict[str, Any] = {
        "ratio": None,
        "target": MEMORY_TARGET,
        "driver_memory_ratio": None,
        "worker_memory_ratio": None,
        "spark_driver_memory_ratio": None,
        "wall_per_row_ratio": None,
        "wall_per_row_target": WALL_TARGET,
        "stage_time_per_row_ratios": {},
        "between_rows": None,
    }
    if len(done) < 2:
        return summary
    small, large = done[0], done[-1]
    driver = _ratio_of(peak_mib(large, ["driver"]), peak_mib(small, ["driver"]))
    worker = _ratio_of(peak_mib(large, WORKER_KINDS), peak_mib(small, WORKER_KINDS))
    memory = [value for value in (driver, worker) if value is not None]
    summary.update(
        ratio=max(memory) if memory else None,
        driver_memory_ratio=driver,
        worker_memory_ratio=worker,
        spark_driver_memory_ratio=_ratio_of(peak_mib(large, ["spark_driver"]), peak_mib(small, ["spark_driver"])),
        wall_per_row_ratio=_ratio_of(large["wall_s"] / large["rows"], small["wall_s"] / small["rows"]),
        stage_time_per_row_ratios={
            stage: _ratio_of(large["timings_s"][stage] / large["rows"], small["timings_s"][stage] / small["rows"])
            for stage in STAGES
            if stage in large.get("timings_s", {}) and stage in small.get("timings_s", {})
        },
        between_rows=[small["rows"], large["rows"]],
    )
    return summary


def side_by_side(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One short row per size: the figures to read across."""
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"rows": size["rows"], "status": size["status"], "wall_s": size["wall_s"]}
        row.update({f"{stage}_s": size.get("timings_s", {}).get(stage) for stage in STAGES})
        row.update(rows_per_s=size.get("rows_per_s"), split_path=size.get("split_path"))
        row.update({f"{kind}_peak_mib": peak_mib(size, [kind]) for kind in ("driver", "spark_driver", *WORKER_KINDS)})
        row["tree_peak_mib"] = size.get("memory", {}).get("max_tree_mib")
        rows.append(row)
    return rows


def notes(sizes: list[dict[str, Any]], summary: dict[str, Any], ray_address: str | None) -> list[str]:
    """What the figures do and do not say (from what was measured, and from the code where it explains them)."""
    out = [
        "RSS counts shared pages in every process that maps them (shared libraries, and Ray's object store in the "
        "processes that read from it), so the sums over a kind overstate its memory; peaks shorter than the sampling "
        "interval can be missed.",
        "Wall time is measured around the run-all process (interpreter start-up and imports included); generating and "
        "uploading the raw data is not in it.",
    ]
    if ray_address:
        out.append(
            f"Ray runs at {ray_address}, not inside run-all: its trial and worker processes are not in the sampled "
            "tree, so the worker ratio is not measured."
        )
    done = sorted((s for s in sizes if s["status"] == "ok"), key=lambda s: s["rows"])
    failed = [s["rows"] for s in sizes if s["status"] != "ok"]
    if failed:
        out.append(f"Sizes that did not complete (no timings, no ratio from them): {failed}.")
    if done and not any(peak_mib(s, WORKER_KINDS) for s in done):
        out.append("No Ray trial or Train worker process was seen: the worker ratio is not measured.")
    driver = summary.get("driver_memory_ratio")
    if driver is not None and driver > 1.5:
        large = done[-1]
        stage = large["memory"]["kinds"].get("driver", {}).get("max_process_stage")
        text = f"The driver's peak grows with rows ({driver}x between the smallest and the largest size)"
        if stage == "ingest":
            text += (
                "; at the largest size it came during ingest, which today parses every raw object into memory before "
                "validating and copying (ml.ingest.snapshot)"
            )
        elif stage:
            text += f"; at the largest size it came during {stage}"
        out.append(text + ".")
    paths = {s["rows"]: s.get("split_path") for s in done}
    if paths:
        out.append(f"Split path per size (from run-all's log): {paths}.")
    return out


def parse_rows(text: str) -> list[int]:
    """`1000000,5e6,20M` -> [1000000, 5000000, 20000000] (k and M suffixes accepted)."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        number = part[:-1] if scale != 1 else part
        sizes.append(int(float(number) * scale))
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"--rows needs positive sizes, not {text!r}")
    return sizes


@contextmanager
def raw_data(settings: Settings, dataset: str, rows: int, args: Any) -> Iterator[dict[str, Any]]:
    """The synthetic raw objects of one size for the block (deleted afterwards unless --keep)."""
    from ml.clients import s3_client
    from ml.storage import S3Uri, delete_prefix

    client = s3_client(settings.s3)
    bucket, prefix = settings.lake.raw_bucket, f"{RAW_PREFIX}/{dataset}/"
    started = time.perf_counter()
    try:
        written = upload_dataset(client, bucket, prefix, rows, args.chunk_rows, args.seed)
        yield {
            "uri": f"s3://{bucket}/{prefix}",
            **written,
            "generate_upload_s": round(time.perf_counter() - started, 2),
        }
    finally:
        if not args.keep:
            delete_prefix(S3Uri(bucket, prefix), client)


def main(argv: list[str] | None, settings: Settings) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--rows", default="1000000,5000000,20000000", help="sizes, comma-separated (k, M allowed)")
    parser.add_argument("--chunk-rows", type=int, default=500_000, help="rows per raw Parquet part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-space", default="small", help="run-all's --search-space")
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--workers-per-trial", type=int, default=1, help="run-all's: > 1 trains data-parallel")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="run-all's (default: its own)")
    parser.add_argument("--cache-mb", type=float, default=64.0, help="run-all's: larger splits are streamed")
    parser.add_argument("--no-register", action="store_true", help="stop each run after evaluation")
    parser.add_argument("--interval-s", type=float, default=0.2, help="RSS sampling interval")
    parser.add_argument("--timeout-s", type=float, default=7200, help="for each size's run-all")
    parser.add_argument("--keep", action="store_true", help="keep the raw data, lake folders, experiments, models")
    args = parser.parse_args(argv)
    try:
        sizes_wanted = parse_rows(args.rows)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    sizes: list[dict[str, Any]] = []
    left: dict[str, list[str]] = {}
    tag = uuid.uuid4().hex[:6]
    for rows in sizes_wanted:
        dataset = f"bench_b9_{rows}_{tag}"
        log.info("B9: %d rows, dataset %s", rows, dataset)
        try:
            with raw_data(settings, dataset, rows, args) as raw:
                size = run_size(settings, rows, raw["uri"], dataset, args)
            size["raw"] = raw
        finally:
            if not args.keep:
                left[dataset] = delete_run_outputs(settings, dataset, TASK, model=not args.no_register)
        sizes.append(size)

    summary = scale_summary(sizes)
    result = {
        "name": "B9 the pipeline at scale (python -m ml run-all): peak RSS and wall time per row, largest / smallest",
        **summary,
        "driver_memory_target": MEMORY_TARGET,
        "worker_memory_target": MEMORY_TARGET,
        "side_by_side": side_by_side(sizes),
        "sizes": sizes,
        "data": {
            "columns": dataset_columns(),
            "numeric": NUMERIC,
            "categorical": f"{CATEGORICAL} x {LEVELS} levels",
            "classes": list(CLASSES),
            "format": f"Parquet parts of {args.chunk_rows} rows, s3://{settings.lake.raw_bucket}/{RAW_PREFIX}/<dataset>/",
            "seed": args.seed,
        },
        "search": {
            "search_space": args.search_space,
            "num_samples": 1,
            "max_concurrent_trials": 1,
            "max_epochs": args.max_epochs,
            "workers_per_trial": args.workers_per_trial,
            "gpus_per_worker": args.gpus_per_worker,
            "cache_mb": args.cache_mb,
            "register": not args.no_register,
        },
        "sampling_interval_s": args.interval_s,
        "ray_address": settings.ray.address or "local (started inside run-all)",
        "notes": notes(sizes, summary, settings.ray.address),
        "cleanup_problems": {name: problems for name, problems in left.items() if problems},
        "left_behind": "Kafka events of the runs; each dataset's external Hive table entry in the local metastore",
    }
    document = report("b9_scale", result, packages=("pyspark", "pyarrow", "numpy", "ray", "torch", "mlflow", "psutil"))
    if any(size["status"] != "ok" for size in sizes):
        sys.exit(1)
    return document


if __name__ == "__main__":
    main(sys.argv[1:], benchmark_settings())
