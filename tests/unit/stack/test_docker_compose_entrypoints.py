"""Every program docker-compose.yaml names resolves, checked without Docker and without starting anything.

What a service runs (its entrypoint and command, airflow-init's script, the healthchecks) is split into programs, and
each is resolved against what the project image installs:

  gunicorn APP           `module:factory()` / `module:attr`: the module imports, the attribute exists (and is callable)
  python -m MODULE       importlib finds it (a package needs a __main__)
  airflow SUB ...        Airflow 3.3's own CLI parser accepts the arguments (parsed, never run)
  spark-class MAIN       the class is in the pyspark wheel's jars
  java ... -cp CP MAIN   every classpath entry is a folder docker/Dockerfile fills, and the class is in one of them
  ray SUB / mlflow SUB   the click command accepts the options and their values (parsed, never run)
  /opt/mlops/bin/NAME    docker/Dockerfile copies a file of the repository there

Container paths of jars map to what the project fetches: /opt/mlops/jars/spark is the pyspark wheel's jars folder
(checked here, class by class); spark-s3a and postgresql come from the stack's Maven projects (stack/maven/*.xml),
checked by name, since unit tests do not download them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import io
import re
import shlex
import zipfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.unit.stack.test_docker_compose import (
    AIRFLOW_SERVICES,
    PROJECT_DOCKERFILE,
    REPO_ROOT,
    dockerfile_copies,
    interpolate,
    load_compose,
)

# The wrappers in front of a service's program.
WRAPPERS = ("/usr/bin/dumb-init", "--")
# Where docker/Dockerfile puts the jars (container path) -> the stack's Maven project that fetches them.
MAVEN_JAR_FOLDERS = {
    "/opt/mlops/jars/spark-s3a": "stack/maven/spark-s3a-pom.xml",
    "/opt/mlops/jars/postgresql": "stack/maven/postgresql-pom.xml",
    "/opt/mlops/jars/spark-lineage": "stack/maven/spark-lineage-pom.xml",
    "/opt/mlops/jars/spark-kafka": "stack/maven/spark-kafka-pom.xml",
}
SPARK_JARS = "/opt/mlops/jars/spark"  # the pyspark wheel's jars folder (a link the Dockerfile makes)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = load_compose()["services"]
    return result


# --- what the services run --------------------------------------------------------------------------------------------


def _argv(value: Any) -> list[str]:
    """A command or entrypoint as arguments, interpolated as Compose does (with the generated .env; `$$` -> `$`)."""
    if value is None:
        return []
    return shlex.split(interpolate(value)) if isinstance(value, str) else [interpolate(str(word)) for word in value]


SHELL_OPERATORS = frozenset({";", "&&", "||", "|", "&"})


def _shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell script (as Compose passes it on: interpolated), each as arguments: continuation
    lines joined, lists and pipelines split at their operators (outside quotes), a redirection and what follows it
    dropped."""
    text = script.replace("\\\n", " ")
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in SHELL_OPERATORS:
                cut = next((i for i, word in enumerate(command) if word.startswith(("<", ">"))), len(command))
                if command[:cut]:
                    yield command[:cut]
                command = []
            else:
                command.append(token)


def programs(name: str, service: dict[str, Any]) -> Iterator[list[str]]:
    """Every program line a service runs: its entrypoint + command, bash -c scripts, and its healthcheck."""
    entrypoint, command = _argv(service.get("entrypoint")), _argv(service.get("command"))
    if name in AIRFLOW_SERVICES and not entrypoint:
        yield ["airflow", *command]  # the image's /entrypoint runs the command as `airflow <command>`
    else:
        argv = [*entrypoint, *command]
        while argv and argv[0] in WRAPPERS:
            argv = argv[1:]
        if argv[:2] in (["/bin/bash", "-c"], ["bash", "-c"]):
            yield from _shell_commands(argv[2])
        elif argv:
            yield argv
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test and test[0] == "CMD-SHELL":
        yield from _shell_commands(interpolate(test[1]))
    elif isinstance(test, list) and test and test[0] == "CMD":
        yield [interpolate(str(word)) for word in test[1:]]


# --- resolvers: each returns what is wrong with one program line ---------------------------------------------------


def gunicorn_problems(argv: list[str]) -> list[str]:
    target = argv[-1]
    module_name, _, attribute = target.partition(":")
    factory = attribute.endswith("()")
    attribute = attribute.removesuffix("()")
    if not module_name or not attribute.isidentifier():
        return [f"gunicorn: {target!r} is not module:attr or module:factory()"]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return [f"gunicorn: cannot import {module_name}: {error}"]
    if not hasattr(module, attribute):
        return [f"gunicorn: {module_name} has no {attribute}"]
    if factory and not callable(getattr(module, attribute)):
        return [f"gunicorn: {module_name}.{attribute} is not callable"]
    return []


def python_problems(argv: list[str]) -> list[str]:
    if "-m" not in argv:
        return []  # `python -c ...` (healthchecks, airflow-init's one-liners)
    module = argv[argv.index("-m") + 1]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return [f"python -m {module}: no such module"]
    if spec.submodule_search_locations is not None and importlib.util.find_spec(f"{module}.__main__") is None:
        return [f"python -m {module}: a package without __main__"]
    return []


@cache
def _airflow_parser() -> argparse.ArgumentParser:
    from airflow.cli import cli_parser

    parser: argparse.ArgumentParser = cli_parser.get_parser()
    return parser


def airflow_problems(argv: list[str]) -> list[str]:
    """Parse (never run) the arguments with Airflow's own CLI parser; shell variables stand for a plain word."""
    args = ["x" if "$" in word else word for word in argv[1:]]
    with contextlib.redirect_stderr(io.StringIO()) as errors, contextlib.redirect_stdout(io.StringIO()):
        try:
            _airflow_parser().parse_args(args)
        except SystemExit:
            reason = (errors.getvalue().strip().splitlines() or ["rejected"])[-1]
            return [f"airflow {' '.join(args)}: {reason}"]
    return []


@cache
def _classes_in(folder: Path) -> frozenset[str]:
    """The class names (dotted) in every jar of a folder."""
    found: set[str] = set()
    for jar in folder.glob("*.jar"):
        with zipfile.ZipFile(jar) as archive:
            found.update(
                entry.removesuffix(".class").replace("/", ".")
                for entry in archive.namelist()
                if entry.endswith(".class")
            )
    return frozenset(found)


def pyspark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def _maven_artifacts(pom: str) -> list[str]:
    return re.findall(r"<artifactId>([^<]+)</artifactId>", (REPO_ROOT / pom).read_text(encoding="utf-8"))[1:]


def classpath_problems(classpath: str, conf_dir: str | None) -> tuple[list[str], list[Path]]:
    """What is wrong with a container classpath, and the local folders that stand for its entries."""
    problems, local = [], []
    copied = {target.rstrip("/") for target in dockerfile_copies("jars").values()}
    for entry in classpath.split(":"):
        folder = entry.removesuffix("/*")
        if folder == SPARK_JARS:
            local.append(pyspark_jars())
        elif folder in MAVEN_JAR_FOLDERS:
            pom = MAVEN_JAR_FOLDERS[folder]
            if folder not in copied:
                problems.append(f"{folder}: docker/Dockerfile copies no jars there")
            if not (REPO_ROOT / pom).is_file() or not _maven_artifacts(pom):
                problems.append(f"{folder}: {pom} names no artifact")
        elif entry != conf_dir:
            problems.append(f"classpath entry {entry}: not a folder the image fills")
    return problems, local


def java_problems(argv: list[str], conf_dir: str | None = None) -> list[str]:
    if argv[0] == "spark-class":
        classpath, main = f"{SPARK_JARS}/*", argv[1]
    else:
        if "-cp" not in argv:
            return [f"java: no -cp in {argv}"]
        classpath = argv[argv.index("-cp") + 1]
        main = next((word for word in argv[argv.index("-cp") + 2 :] if not word.startswith("-")), "")
    problems, folders = classpath_problems(classpath, conf_dir)
    if not any(main in _classes_in(folder) for folder in folders):
        problems.append(f"{argv[0]}: main class {main!r} is in none of the jars of {classpath}")
    return problems


@cache
def _click_groups() -> dict[str, Any]:
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import cli as ray_cli

    return {"ray": ray_cli, "mlflow": mlflow_cli}


def click_problems(argv: list[str]) -> list[str]:
    """Parse (never run) `ray SUB ...` / `mlflow SUB ...` with the program's own click command."""
    import click

    group = _click_groups()[argv[0]]
    command = group.commands.get(argv[1]) if len(argv) > 1 else None
    if command is None:
        return [f"{argv[0]}: no subcommand {argv[1:2]}"]
    try:
        command.make_context(argv[1], list(argv[2:]))
    except click.ClickException as error:
        return [f"{argv[0]} {argv[1]}: {error.format_message()}"]
    return []


def file_problems(argv: list[str]) -> list[str]:
    """A program the image carries as a file of this repository (COPY in docker/Dockerfile)."""
    sources = {target: source for source, target in _plain_copies()}
    source = sources.get(argv[0])
    if source is None:
        return [f"{argv[0]}: docker/Dockerfile copies nothing there"]
    if not (REPO_ROOT / source).is_file():
        return [f"{argv[0]}: its source {source} is missing"]
    return []


def _plain_copies() -> list[tuple[str, str]]:
    """(source, target) of docker/Dockerfile's COPY lines from the build context."""
    pairs = []
    for line in PROJECT_DOCKERFILE.read_text(encoding="utf-8").splitlines():
        words = [word for word in line.split()[1:] if not word.startswith("--")] if line.startswith("COPY ") else []
        if len(words) == 2 and "--from=" not in line:
            pairs.append((words[0], words[1]))
    return pairs


RESOLVERS: dict[str, Callable[[list[str]], list[str]]] = {
    "gunicorn": gunicorn_problems,
    "python": python_problems,
    "airflow": airflow_problems,
    "spark-class": java_problems,
    "ray": click_problems,
    "mlflow": click_problems,
}
# Shell builtins and programs of the base image: nothing of the project's to resolve.
SYSTEM_PROGRAMS = frozenset(
    {"curl", "grep", "set", "if", "[[", "then", "fi", "echo", "mkdir", "chmod", "chown", "trap"}
)
PROJECT_IMAGE = load_compose()["x-project-image"]["image"]


def entry_point_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    """Every program line of every service of the project image, resolved; `service: problem` for each that does
    not resolve. (postgres, s3 and kafka run third-party programs.)"""
    problems = []
    for name, service in services.items():
        if service.get("image") != PROJECT_IMAGE:
            continue
        conf_dir = interpolate(str((service.get("environment") or {}).get("HIVE_CONF_DIR", ""))) or None
        for argv in programs(name, service):
            if argv[0].startswith("/opt/mlops/bin/"):
                problems += [f"{name}: {problem}" for problem in file_problems(argv)]
                argv = argv[1:]  # it runs the command it is given
            while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):  # VAR=value [program ...]
                argv = argv[1:]
            if not argv:
                continue
            program = argv[0]
            if program in RESOLVERS:
                problems += [f"{name}: {problem}" for problem in RESOLVERS[program](argv)]
            elif program == "java":
                problems += [f"{name}: {problem}" for problem in java_problems(argv, conf_dir)]
            elif program not in SYSTEM_PROGRAMS:
                problems.append(f"{name}: unknown program {program!r} (teach this test to resolve it)")
    return problems


# --- tests ------------------------------------------------------------------------------------------------------------


def test_every_program_a_service_names_resolves(services: dict[str, dict[str, Any]]) -> None:
    assert entry_point_problems(services) == []


def test_each_kind_of_program_is_seen(services: dict[str, dict[str, Any]]) -> None:
    """The resolvers above are not vacuous: each kind occurs in the file, with the programs the stack relies on."""
    seen = {tuple(argv[:2]) for name, service in services.items() for argv in programs(name, service)}
    lines = [" ".join(argv) for name, service in services.items() for argv in programs(name, service)]
    for expected in [
        ("gunicorn", "--bind"),
        ("python", "-m"),
        ("airflow", "api-server"),
        ("airflow", "scheduler"),
        ("airflow", "dag-processor"),
        ("airflow", "triggerer"),
        ("airflow", "db"),
        ("airflow", "connections"),
        ("airflow", "pools"),
        ("airflow", "jobs"),
        ("spark-class", "org.apache.spark.deploy.master.Master"),
        ("spark-class", "org.apache.spark.deploy.worker.Worker"),
        ("ray", "start"),
        ("ray", "health-check"),
        ("mlflow", "server"),
    ]:
        assert expected in seen, expected
    for main_class in ("org.apache.hadoop.hive.metastore.HiveMetaStore", "org.datanucleus.store.schema.SchemaTool"):
        assert any(line.startswith("/opt/mlops/bin/hive-metastore-conf java ") and main_class in line for line in lines)


def test_the_gunicorn_target_check_can_fail() -> None:
    assert gunicorn_problems(["gunicorn", "--bind", "0.0.0.0:8000", "ml.serve.app:create_app()"]) == [
        "gunicorn: ml.serve.app has no create_app"
    ]
    assert gunicorn_problems(["gunicorn", "ml.serve:create-app"]) == [
        "gunicorn: 'ml.serve:create-app' is not module:attr or module:factory()"
    ]


def _set_command(service: str, index: int, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(services: dict[str, Any]) -> None:
        services[service]["command"][index] = value

    return mutate


def _replace_in_script(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(services: dict[str, Any]) -> None:
        script = services["airflow-init"]["command"][-1]
        assert old in script
        services["airflow-init"]["command"][-1] = script.replace(old, new)

    return mutate


def _set_key(service: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(services: dict[str, Any]) -> None:
        services[service][key] = value

    return mutate


def _replace_in_list(service: str, key: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(services: dict[str, Any]) -> None:
        values = services[service][key]
        values[values.index(old)] = new

    return mutate


BROKEN_COPIES = {
    "gunicorn-missing-factory": (_set_command("serve", -1, "ml.serve:make_app()"), "serve: gunicorn"),
    "gunicorn-missing-module": (_set_command("serve", -1, "ml.serving:create_app()"), "cannot import"),
    "gunicorn-not-callable": (_set_command("serve", -1, "ml.serve:TYPE_CHECKING()"), "not callable"),
    "python-m-missing-module": (_set_command("stack-init", -1, "stack.init_resource"), "no such module"),
    "python-m-package-without-main": (_set_command("stack-init", -1, "ml.serve"), "without __main__"),
    "airflow-unknown-command": (_set_key("airflow-triggerer", "command", "trigger"), "airflow-triggerer: airflow"),
    "airflow-removed-subcommand": (_replace_in_script("airflow db migrate", "airflow db upgrade"), "airflow db"),
    "airflow-missing-argument": (_replace_in_script("spark_metastore 8 ", "spark_metastore "), "airflow pools"),
    "airflow-healthcheck-option": (
        lambda services: services["airflow-triggerer"]["healthcheck"].update(
            test=["CMD-SHELL", "airflow jobs check --job-type Triggerer"]
        ),
        "airflow jobs",
    ),
    "spark-class-missing-class": (
        _set_command("spark-master", 1, "org.apache.spark.deploy.master.StandaloneMaster"),
        "main class",
    ),
    "java-missing-main-class": (
        _replace_in_list(
            "hive-metastore",
            "command",
            "org.apache.hadoop.hive.metastore.HiveMetaStore",
            "org.apache.hadoop.hive.metastore.HiveMetaStoreServer",
        ),
        "main class",
    ),
    "java-unknown-classpath-folder": (
        _replace_in_list(
            "hive-metastore-init",
            "command",
            "/opt/mlops/jars/spark/*:/opt/mlops/jars/postgresql/*",
            "/opt/spark/jars/*:/opt/mlops/jars/postgresql/*",
        ),
        "not a folder the image fills",
    ),
    "ray-unknown-option": (
        _replace_in_list("ray-head", "command", "--dashboard-host=0.0.0.0", "--dashboard-hostname=0.0.0.0"),
        "No such option",
    ),
    "ray-bad-value": (_replace_in_list("ray-worker", "command", "--num-cpus=1", "--num-cpus=one"), "not a valid"),
    "ray-healthcheck-option": (
        lambda services: services["ray-head"]["healthcheck"].update(test=["CMD", "ray", "health-check", "--gcs", "x"]),
        "ray health-check",
    ),
    "mlflow-unknown-option": (_replace_in_list("mlflow", "command", "--allowed-hosts", "--allow-hosts"), "mlflow"),
    "file-not-in-the-image": (
        _set_key("hive-metastore", "entrypoint", ["/usr/bin/dumb-init", "--", "/opt/mlops/bin/metastore-conf"]),
        "copies nothing there",
    ),
    "unknown-program": (_set_command("stack-init", 0, "python3.12"), "unknown program"),
}


@pytest.mark.parametrize("case", list(BROKEN_COPIES), ids=list(BROKEN_COPIES))
def test_the_entry_point_check_can_fail(services: dict[str, dict[str, Any]], case: str) -> None:
    mutate, expected = BROKEN_COPIES[case]
    broken = copy.deepcopy(services)
    mutate(broken)
    problems = entry_point_problems(broken)
    assert problems, f"{case}: the broken copy resolved"
    assert any(expected in problem for problem in problems), problems
