"""`python -m stack`: manage the local stack of real services (see `--help`)."""

from __future__ import annotations

import argparse
import os
import sys

from ml.settings import Settings
from stack.config import MLFLOW_BUCKET, apply_stack_environment, stack_paths
from stack.services import AIRFLOW, ALL_SERVICES, SERVICES, StackError


def _up(args: argparse.Namespace) -> int:
    from stack.airflow_home import prepare_airflow_home
    from stack.init_resources import create_buckets, create_topics
    from stack.tools import fetch_all

    env = apply_stack_environment()
    paths = stack_paths()
    for line in fetch_all(paths):
        print(f"  {line}")
    settings = Settings.from_env(env)
    for service in SERVICES:
        print(f"{service.name:8} {service.start(paths, env):16} {service.url}", flush=True)
        if service.name == "s3":
            created = create_buckets(settings.s3, settings.lake, env.get("MLOPS_MLFLOW_BUCKET", MLFLOW_BUCKET))
            print(f"{'':8} buckets created: {created or 'none (all exist)'}")
        if service.name == "kafka":
            created = create_topics(settings.kafka)
            print(f"{'':8} topics created: {created or 'none (all exist)'}")
    if not args.no_airflow:
        print(prepare_airflow_home(paths, env))
    if args.airflow:
        print(f"{AIRFLOW.name:8} {AIRFLOW.start(paths, env):16} {AIRFLOW.url}", flush=True)
    print(f"stack is up; data, logs and pids are in {paths.root}")
    return 0


def _down(args: argparse.Namespace) -> int:
    paths = stack_paths()
    for service in reversed(ALL_SERVICES):
        print(f"{service.name:8} {service.stop(paths)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    env = apply_stack_environment()
    paths = stack_paths()
    all_ok = True
    for service in ALL_SERVICES:
        pid = service.running_pid(paths)
        healthy = pid is not None and service.is_healthy(env)
        if service in SERVICES or pid is not None:  # Airflow only counts when it was started
            all_ok &= healthy
        state = "healthy" if healthy else ("unhealthy" if pid else "stopped")
        print(f"{service.name:8} {state:10} pid={pid or '-':<8} {service.url}  log: {service.log_file(paths)}")
    return 0 if all_ok else 1


def _tools(args: argparse.Namespace) -> int:
    from stack.tools import fetch_all

    apply_stack_environment()
    for line in fetch_all(stack_paths()):
        print(line)
    return 0


def _env(args: argparse.Namespace) -> int:
    env = apply_stack_environment()
    keys = sorted(k for k in env if k.startswith(("AWS_", "MLFLOW_", "KAFKA_", "SPARK_", "MLOPS_", "AIRFLOW", "RAY_")))
    for key in keys:
        print(f"export {key}='{env[key]}'")
    print(f"export PYTHONPATH='{env['PYTHONPATH']}'")
    print(f"export PATH='{env['PATH']}'")
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.command:
        raise StackError("usage: python -m stack run -- COMMAND [ARGS...]")
    env = apply_stack_environment()
    command = args.command[1:] if args.command[0] == "--" else args.command
    os.execvpe(command[0], command, env)  # noqa: S606 - replaces this process, like `env`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="The local stack: S3 server (versitygw), Kafka 4 (KRaft), MLflow, and the Airflow home, "
        "as plain processes on 127.0.0.1. Data, logs and pids live in .stack/ (or $MLOPS_STACK_DIR).",
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    up = sub.add_parser("up", help="fetch what is missing, start every service, wait until healthy (idempotent)")
    up.add_argument("--no-airflow", action="store_true", help="skip migrating the Airflow home")
    up.add_argument("--airflow", action="store_true", help="also start `airflow standalone` (web UI on :8080)")
    up.set_defaults(func=_up)
    sub.add_parser("down", help="stop exactly what `up` started and free its ports").set_defaults(func=_down)
    sub.add_parser("status", help="health of each service (exit 1 unless all are healthy)").set_defaults(func=_status)
    sub.add_parser("tools", help="fetch the S3 server binary and the Kafka/Spark jars").set_defaults(func=_tools)
    sub.add_parser("env", help="print the stack's environment as shell exports").set_defaults(func=_env)
    run = sub.add_parser("run", help="run a command in the stack's environment")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StackError as error:
        print(f"stack: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
