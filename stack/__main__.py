"""`python -m stack`: manage the local stack of real services (see `--help`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ml.settings import Settings
from stack.config import (
    IDENTITIES,
    KAFKA_BOOTSTRAP,
    MLFLOW_BUCKET,
    MLFLOW_URI,
    PIPELINE_IDENTITY,
    PROFILES,
    REPO_ROOT,
    SECRET_VARIABLES,
    active_profile,
    apply_stack_environment,
    on_stack_s3,
    stack_environment,
    stack_paths,
)
from stack.disk import SUITE_NEEDS_GIB, require_free_space
from stack.profiles import every_service, profile_named
from stack.services import StackError, port_in_use


def _up(args: argparse.Namespace) -> int:
    from stack.airflow_home import prepare_airflow_home
    from stack.init_resources import create_buckets, prepare_kafka
    from stack.kafka_auth import admin_settings, client_passwords
    from stack.mlflow_auth import prepare_stack_users
    from stack.s3_users import ensure_users_and_policies, stack_users
    from stack.tools import fetch_all

    paths = stack_paths()
    profile = profile_named(args.profile or active_profile(paths))
    running = [service.name for service in every_service() if service.running_pid(paths) is not None]
    recorded = paths.profile_file.read_text().strip() if paths.profile_file.exists() else None
    foreign = [name for name in running if name not in {service.name for service in profile.all_services}]
    if running and (recorded not in (None, profile.name) or (recorded is None and foreign)):
        raise StackError(
            f"the {recorded or 'other'} profile is up ({', '.join(running)}); run `make stack-down` before starting "
            f"the {profile.name} profile"
        )
    require_free_space(paths.root, SUITE_NEEDS_GIB)
    env = apply_stack_environment(profile.name)
    for line in fetch_all(paths):
        print(f"  {line}")
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.profile_file.write_text(profile.name)
    settings = Settings.from_env(env)
    width = max(len(service.name) for service in profile.all_services)
    for service in profile.services:
        print(f"{service.name:{width}} {service.start(paths, env):16} {service.url}", flush=True)
        if service.name == "s3":
            mlflow_bucket = env.get("MLOPS_MLFLOW_BUCKET", MLFLOW_BUCKET)
            created = create_buckets(settings.s3, settings.lake, mlflow_bucket)
            print(f"{'':{width}} buckets created: {created or 'none (all exist)'}")
            if on_stack_s3(paths, env):  # the server `up` started: its users and bucket policies, as root
                done = ensure_users_and_policies(settings.s3, settings.lake, stack_users(paths), mlflow_bucket)
                print(
                    f"{'':{width}} users created: {', '.join(done['s3_users_created']) or 'none (all exist)'}; "
                    f"policies put: {', '.join(done['bucket_policies_put']) or 'none (all current)'} (stack.s3_users)"
                )
        if service.name == "kafka":
            kafka = settings.kafka
            if kafka.bootstrap_servers == KAFKA_BOOTSTRAP:  # the broker `up` started: its users and ACLs, as admin
                kafka = admin_settings(paths)
            done = prepare_kafka(kafka, client_passwords(paths))
            if "users" in done:
                print(f"{'':{width}} users: {', '.join(done['users'])}; ACL rules: {done['acls']} (stack.kafka_auth)")
            print(f"{'':{width}} topics created: {done['topics_created'] or 'none (all exist)'}")
        if service.name == "mlflow" and settings.mlflow.tracking_uri == MLFLOW_URI:
            # The server `up` started: its users and roles, as its admin.
            changed = prepare_stack_users(paths)
            print(f"{'':{width}} users and roles: {', '.join(changed) or 'unchanged'} (stack.mlflow_auth)")
        if service.name == "postgres":
            from stack.cluster import create_databases

            created = create_databases(paths)
            print(f"{'':{width}} databases created: {created or 'none (all exist)'}")
    if not args.no_airflow:
        print(prepare_airflow_home(paths, env, metastore_writers=profile.metastore_writers))
    if args.airflow:
        for service in profile.airflow:
            print(f"{service.name:{width}} {service.start(paths, env):16} {service.url}", flush=True)
    print(f"stack ({profile.name} profile) is up; data, logs and pids are in {paths.root}")
    return 0


def _down(args: argparse.Namespace) -> int:
    paths = stack_paths()
    stopped = [service for service in reversed(every_service()) if service.pid_file(paths).exists()]
    for service in stopped:
        print(f"{service.name:18} {service.stop(paths)}")
    paths.profile_file.unlink(missing_ok=True)
    # Tear-down frees every port it used: one still taken is a process this stack lost track of.
    taken = sorted({port for service in stopped for port in service.ports if port_in_use(port)})
    if taken:
        raise StackError(f"ports still taken after stopping the stack: {taken} (see `ss -ltnp`)")
    print("stack is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    paths = stack_paths()
    profile = profile_named(args.profile or active_profile(paths))
    env = apply_stack_environment(profile.name)
    all_ok = True
    print(f"profile: {profile.name}")
    for service in profile.all_services:
        pid = service.running_pid(paths)
        healthy = pid is not None and service.is_healthy(env)
        if service in profile.services or pid is not None:  # Airflow only counts when it was started
            all_ok &= healthy
        state = "healthy" if healthy else ("unhealthy" if pid else "stopped")
        print(f"{service.name:18} {state:10} pid={pid or '-':<8} {service.url}  log: {service.log_file(paths)}")
    return 0 if all_ok else 1


def _tools(args: argparse.Namespace) -> int:
    from stack.tools import fetch_all

    apply_stack_environment(args.profile)
    for line in fetch_all(stack_paths()):
        print(line)
    return 0


def _env(args: argparse.Namespace) -> int:
    callers = dict(os.environ)
    env = apply_stack_environment(args.profile, args.identity)
    keys = sorted(k for k in env if k.startswith(("AWS_", "MLFLOW_", "KAFKA_", "SPARK_", "MLOPS_", "AIRFLOW", "RAY_")))
    for key in keys:
        if key in SECRET_VARIABLES and callers.get(key) == env[key]:
            print(f"# {key}: yours, from this shell's environment")
        elif key in SECRET_VARIABLES:
            # Never the secret itself (terminals and CI logs keep what is printed): `eval` runs the lookup instead.
            lookup = f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} {shlex.quote(sys.executable)} -m stack secret"
            options = f"--profile {env['MLOPS_STACK_PROFILE']} --as {args.identity}"
            print(f'export {key}="$({lookup} {options} {key})"')
        else:
            print(f"export {key}={shlex.quote(env[key])}")
    print(f"export PYTHONPATH='{env['PYTHONPATH']}'")
    print(f"export PATH='{env['PATH']}'")
    return 0


def _secret(args: argparse.Namespace) -> int:
    if args.name not in SECRET_VARIABLES:
        raise StackError(
            f"{args.name} is not one of the stack's secret variables ({', '.join(sorted(SECRET_VARIABLES))})"
        )
    # What `env` would give, from the caller's settings but without secrets (or the S3 key id and the Kafka user they
    # belong with) that an `eval` of `env` exported a moment ago: those would hide the stack's own.
    exported = {*SECRET_VARIABLES, "AWS_ACCESS_KEY_ID", "MLOPS_KAFKA_USERNAME", "MLFLOW_TRACKING_USERNAME"}
    own = {key: value for key, value in os.environ.items() if key not in exported}
    value = stack_environment(own, profile=args.profile, identity=args.identity).get(args.name)
    if value is None:
        raise StackError(f"{args.name} is not set in this profile's environment")
    print(value)
    return 0


def _disk(args: argparse.Namespace) -> int:
    free_gib = require_free_space(args.path, args.need_gib)
    print(f"{free_gib:.1f} GiB free on the filesystem of {args.path} (at least {args.need_gib:g} needed)")
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.command:
        raise StackError("usage: python -m stack run -- COMMAND [ARGS...]")
    env = apply_stack_environment(args.profile, args.identity)
    command = args.command[1:] if args.command[0] == "--" else args.command
    os.execvpe(command[0], command, env)  # noqa: S606 - replaces this process, like `env`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="The local stack: S3 server (versitygw), Kafka 4 (KRaft), MLflow, and the Airflow home, "
        "as plain processes on 127.0.0.1. Data, logs and pids live in .stack/ (or $MLOPS_STACK_DIR).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="local (default): each engine in its local mode; cluster: PostgreSQL, Airflow's components, a Hive "
        "metastore, Spark standalone and a Ray cluster. Default: $MLOPS_STACK_PROFILE, else the profile that is up",
    )
    # Whom the environment's clients act as on the stack's services that take logins.
    identity = argparse.ArgumentParser(add_help=False)
    identity.add_argument(
        "--as",
        dest="identity",
        choices=tuple(IDENTITIES),
        default=PIPELINE_IDENTITY,
        help="whom the environment logs in to the local Kafka broker and MLflow server as: pipeline (default) or "
        "serving (the prediction service: reads mlops.model.promoted.v1 and MLflow, writes nothing, no S3 key)",
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    up = sub.add_parser(
        "up", parents=[common], help="fetch what is missing, start every service, wait until healthy (idempotent)"
    )
    up.add_argument("--no-airflow", action="store_true", help="skip migrating the Airflow home")
    up.add_argument(
        "--airflow",
        action="store_true",
        help="also start Airflow (web UI on :8080): `airflow standalone`, or its components in the cluster profile",
    )
    up.set_defaults(func=_up)
    sub.add_parser("down", parents=[common], help="stop exactly what `up` started and free its ports").set_defaults(
        func=_down
    )
    sub.add_parser(
        "status", parents=[common], help="health of each service (exit 1 unless all are healthy)"
    ).set_defaults(func=_status)
    sub.add_parser("tools", parents=[common], help="fetch the S3 server binary and the Kafka/Spark jars").set_defaults(
        func=_tools
    )
    sub.add_parser(
        "env", parents=[common, identity], help="print the stack's environment as shell exports"
    ).set_defaults(func=_env)
    secret = sub.add_parser(
        "secret", parents=[common, identity], help="print one secret variable (what `env` refers to)"
    )
    secret.add_argument("name")
    secret.set_defaults(func=_secret)
    disk = sub.add_parser("disk", help="exit 1, saying so, when the disk is too full for the suite")
    disk.add_argument("--need-gib", type=float, default=SUITE_NEEDS_GIB, help=f"default {SUITE_NEEDS_GIB:g}")
    disk.add_argument("--path", type=Path, default=REPO_ROOT, help="a folder on the filesystem to check")
    disk.set_defaults(func=_disk)
    run = sub.add_parser("run", parents=[common, identity], help="run a command in the stack's environment")
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
