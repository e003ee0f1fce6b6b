"""`python -m bench [--quick] [--only B1,B5]`: run the ratio benchmarks B1..B10 one after another; summarise.

B3b is B3 again at 50M rows (its own results file), for the memory the pandas baseline needs at that size.

This runner is the entry point: it builds the settings (endpoints, buckets, credentials: ml.settings.Settings) once
from its environment and passes them to every benchmark (`MLOPS_BENCH_SETTINGS`, see bench.common). Each benchmark
runs as its own subprocess (`python -m bench.bN_...`, a fresh interpreter: no Spark JVM, Ray or Torch state carried
from one into the next), with small settings under `--quick`. Each one's JSON ends up in
`bench/results/<name>.json` (written by `bench.common.report`; should a benchmark only print its JSON, this runner
saves what it printed through the same function). The summary (ratio, target, met or not, seconds, status per
benchmark) is written to `bench/results/summary.json` and printed, then a table of every ratio (a benchmark's own
and the others it reports) against its target. Exit status 1 if any benchmark failed.

    python -m stack run -- .venv/bin/python -m bench --quick              # minutes
    python -m stack run -- .venv/bin/python -m bench --only B5,B7         # what DESIGN.md specifies, two of them
    make bench                                                            # all of them, full size
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO_ROOT, RESULTS_DIR, SETTINGS_VARIABLE, machine_info, report, settings_json
from ml.settings import Settings


@dataclass(frozen=True)
class Benchmark:
    id: str
    name: str  # module bench.<name>, results file bench/results/<name>.json
    quick: tuple[str, ...]  # arguments under --quick
    full: tuple[str, ...] = ()  # arguments otherwise (the module's defaults are the full size)
    secondaries: tuple[str, ...] = ()  # more ratios in the result, each with its own target (X_ratio: X_target)
    report_as: str | None = None  # results file bench/results/<report_as>.json when the module runs twice
    needs_airflow: bool = False  # started for it when not running, and stopped again after (airflow_for)

    @property
    def results_name(self) -> str:
        return self.report_as or self.name


B3B_RESULTS = "b3_spark_vs_pandas_50m"

BENCHMARKS = (
    Benchmark("B1", "b1_asha_vs_grid", ("--rows", "5000", "--epochs", "9")),
    Benchmark("B2", "b2_tune_overhead", ("--rows", "10000", "--trials", "4", "--epochs", "4")),
    Benchmark("B3", "b3_spark_vs_pandas", ("--rows", "1000000"), secondaries=("memory_ratio",)),
    Benchmark(
        "B3b",
        "b3_spark_vs_pandas",
        ("--rows", "3000000", "--spark-runs", "1", "--pandas-memory-gib", "1", "--report-as", B3B_RESULTS),
        ("--rows", "50000000", "--spark-runs", "1", "--report-as", B3B_RESULTS),
        secondaries=("memory_ratio",),
        report_as=B3B_RESULTS,
    ),
    Benchmark("B4", "b4_loader_throughput", ("--rows", "50000", "--epochs", "2"), secondaries=("streamed_ratio",)),
    Benchmark(
        "B5",
        "b5_kafka_publisher",
        ("--messages", "5000", "--repeat", "1", "--rows", "40000", "--epochs", "3", "--rounds", "2"),
        secondaries=("training_ratio",),
    ),
    Benchmark("B6", "b6_ingest_vs_awscli", ("--files", "4", "--mb-per-file", "8", "--repeat", "1")),
    Benchmark("B7", "b7_airflow_overhead", ("--pairs", "1"), needs_airflow=True),
    Benchmark(
        "B8",
        "b8_predict_path",
        ("--rounds", "2", "--seconds", "0.3", "--http-rounds", "1", "--http-seconds", "3"),
        secondaries=("single_row_ratio", "http_ratio", "batch_arrow_ratio", "batch_http_ratio"),
    ),
    Benchmark("B9", "b9_scale", ("--rows", "20000,100000"), secondaries=("wall_per_row_ratio",)),
    Benchmark("B10", "b10_serving_metrics", ("--rounds", "1", "--seconds", "3"), secondaries=("broker_down_ratio",)),
)


def meets(value: Any, target: Any) -> bool | None:
    """Whether `value` meets the first bound written in `target` (">= 0.8 on 2 cores, ...", "<= 1.3"); None if
    there is no value or no bound."""
    found = re.search(r"(<=|>=)\s*([0-9.]+)", str(target or ""))
    if value is None or not found:
        return None
    bound = float(found.group(2))
    return bool(value <= bound) if found.group(1) == "<=" else bool(value >= bound)


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last complete JSON object printed at the start of a line (what a benchmark prints at its end)."""
    decoder = json.JSONDecoder()
    found = None
    for match in re.finditer(r"(?m)^\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found = value
    return found


@contextlib.contextmanager
def airflow_for(benchmark: Benchmark) -> Iterator[bool]:
    """Airflow up for a benchmark that needs it (B7): started here when it is not running, and stopped again after,
    so that the other benchmarks do not share the cores with its scheduler, DAG processor and API server (an idle
    `airflow standalone` took ~14% of one core here, its scheduler ~10%). Yields whether Airflow runs while the
    benchmark does (each summary entry's `airflow_running`); one already running is left as it is."""
    from stack.config import active_profile, stack_environment, stack_paths
    from stack.profiles import profile_named

    paths = stack_paths()
    profile = profile_named(active_profile(paths))
    down = [service for service in profile.airflow if service.running_pid(paths) is None]
    if not benchmark.needs_airflow or not down:
        yield len(down) < len(profile.airflow)
        return
    env = stack_environment(profile=profile.name)
    for service in down:
        print(
            f"== {benchmark.id} needs Airflow: {service.name} {service.start(paths, env)}", file=sys.stderr, flush=True
        )
    try:
        yield True
    finally:
        for service in reversed(down):
            print(f"== {service.name} {service.stop(paths)}", file=sys.stderr, flush=True)


def run_one(benchmark: Benchmark, quick: bool, timeout_s: float, settings: Settings) -> dict[str, Any]:
    path = RESULTS_DIR / f"{benchmark.results_name}.json"
    before = path.stat().st_mtime if path.exists() else None
    command = [sys.executable, "-m", f"bench.{benchmark.name}", *(benchmark.quick if quick else benchmark.full)]
    print(f"== {benchmark.id}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        # stderr (logs, progress) passes through; stdout is the benchmark's JSON.
        completed = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, SETTINGS_VARIABLE: settings_json(settings)},
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout_s,
        )
        status = "ok" if completed.returncode == 0 else f"failed (exit {completed.returncode})"
        stdout = completed.stdout
    except subprocess.TimeoutExpired as error:
        status = f"timed out after {timeout_s:.0f} s"
        stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
    seconds = round(time.perf_counter() - started, 1)
    document = None
    if path.exists() and path.stat().st_mtime != before:
        document = json.loads(path.read_text())
    elif status == "ok" and (printed := last_json_object(stdout)) is not None:
        if "benchmark" in printed and "name" not in printed:  # report() names the file under "benchmark"
            printed["name"] = printed.pop("benchmark")
        with contextlib.redirect_stdout(io.StringIO()):  # report() prints; the runner prints only the summary
            document = report(benchmark.results_name, printed)
    elif status == "ok":
        status = "failed (no JSON result)"
    entry: dict[str, Any] = {
        "id": benchmark.id,
        "module": f"bench.{benchmark.name}",
        "status": status,
        "seconds": seconds,
        "arguments": command[3:],
    }
    if document is not None:
        entry.update(
            ratio=document.get("ratio"),
            target=document.get("target"),
            meets_target=meets(document.get("ratio"), document.get("target")),
            result_file=str(path.relative_to(REPO_ROOT)),
        )
        for secondary in benchmark.secondaries:
            value, target = document.get(secondary), document.get(secondary.replace("ratio", "target"))
            entry[secondary] = value
            entry[secondary.replace("ratio", "target")] = target
            entry[secondary.replace("ratio", "meets_target")] = meets(value, target)
    return entry


def summary_table(entries: list[dict[str, Any]]) -> str:
    """One line per ratio (a benchmark's own, then the others it reports): value, target, met or not."""
    lines = [f"{'id':<5} {'ratio':<20} {'value':>8}  {'met':<4} target", "-" * 100]
    for entry in entries:
        if entry["status"] != "ok":
            lines.append(f"{entry['id']:<5} {'':<20} {'':>8}  {'':<4} {entry['status']}")
            continue
        for name in ("ratio", *(key for key in entry if key.endswith("_ratio"))):
            value, target = entry.get(name), entry.get(name.replace("ratio", "target"))
            met = {True: "yes", False: "NO", None: "-"}[meets(value, target)]
            shown = "-" if value is None else f"{value:.3f}"
            lines.append(f"{entry['id']:<5} {name:<20} {shown:>8}  {met:<4} {target or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small settings (minutes, not an hour)")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. B1,B5 (default: all)")
    parser.add_argument("--timeout-s", type=float, default=3600, help="per benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for benchmark in BENCHMARKS:
            print(f"{benchmark.id}  bench.{benchmark.name}  quick: {' '.join(benchmark.quick) or '(defaults)'}")
        return 0
    wanted = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    unknown = wanted - {b.id.upper() for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(b.id for b in BENCHMARKS)}")
    chosen = [b for b in BENCHMARKS if not wanted or b.id.upper() in wanted]
    settings = Settings.from_env(os.environ)
    entries = []
    for benchmark in chosen:
        with airflow_for(benchmark) as airflow_running:
            entries.append(
                {**run_one(benchmark, args.quick, args.timeout_s, settings), "airflow_running": airflow_running}
            )
    machine = machine_info(())
    summary = {
        "quick": args.quick,
        "benchmarks": entries,
        "failed": [e["id"] for e in entries if e["status"] != "ok"],
        "machine_short": f"{machine['usable_cores']} cores, {machine['memory_gib']} GiB, {machine['cpu_model']}",
    }
    report("summary", summary, packages=())
    print(summary_table(entries), file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
