"""docker-compose.yaml and the images it builds: checked without Docker.

The file is validated against the Compose Specification's JSON Schema, taken from the `check-jsonschema` package (which
vendors it), never from a copy in this repository. The other checks cover what the schema cannot see: images and
Dockerfiles, mounted code, host ports (published on 127.0.0.1 only), health-gated dependencies, one Airflow image and
environment, the connections, and credentials: none is written in the file, each is a required variable
(`${NAME:?...}`) that `make compose-env` (stack/compose_env.py, tested in test_compose_env.py) writes into `.env`.
Compose interpolates the file here as it would with that `.env`: `interpolate` fills in a fresh set of the generator's
values (COMPOSE_ENV). Each checker is a plain function that returns what is wrong, and the tests also feed it broken
copies to show that it does fail. More in test_docker_compose_entrypoints.py (every program a service names resolves)
and test_docker_compose_cluster.py (the cluster profile's architecture); both load the file through `load_compose`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ml.settings import KafkaSettings
from stack import compose_env
from stack.config import KAFKA_VERSION, VERSITYGW_VERSION

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
PROJECT_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-init",
)
REQUIRED_SERVICES = {
    *AIRFLOW_SERVICES,
    "postgres",
    "s3",
    "kafka",
    "stack-init",
    "hive-metastore-init",
    "hive-metastore",
    "spark-master",
    "spark-worker-1",
    "spark-worker-2",
    "ray-head",
    "ray-worker",
    "mlflow",
    "serve",
}
# Host folder -> where every Airflow service must see it.
MOUNTED_CODE = {"dags": "/opt/airflow/dags", "plugins": "/opt/airflow/plugins", "ml": "/opt/airflow/ml"}
# The environment the project's programs read (ml.settings, stack.config), with the values inside the compose network.
# Airflow's tasks get the same endpoints from connections (EXPECTED_CONNECTIONS).
PROJECT_ENV = {
    "AWS_ENDPOINT_URL": "http://s3:9000",
    "MLFLOW_S3_ENDPOINT_URL": "http://s3:9000",
    "AWS_DEFAULT_REGION": "us-east-1",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "SPARK_MASTER": "spark://spark-master:7077",
    "MLOPS_HIVE_METASTORE_URI": "thrift://hive-metastore:9083",
    "RAY_ADDRESS": "ray://ray-head:10001",
    "MLOPS_RAW_BUCKET": "raw",
    "MLOPS_LAKE_BUCKET": "lake",
}
# The services whose programs read PROJECT_ENV and the S3 keys: clients of the cluster, not nodes of it.
PROJECT_CLIENTS = ("stack-init", "mlflow", "serve", "hive-metastore")
EXPECTED_CONNECTIONS = {
    "AIRFLOW_CONN_AWS_DEFAULT": "aws",
    "AIRFLOW_CONN_AWS_TUNE": "aws",
    "AIRFLOW_CONN_SPARK_DEFAULT": "spark",
    "AIRFLOW_CONN_KAFKA_DEFAULT": "kafka",
    "AIRFLOW_CONN_KAFKA_S3_EVENTS": "kafka",
    "AIRFLOW_CONN_KAFKA_DRIFT_EVENTS": "kafka",
    "AIRFLOW_CONN_OPENLINEAGE_DEFAULT": "generic",
    "AIRFLOW_CONN_MLFLOW_DEFAULT": "http",
    "AIRFLOW_CONN_RAY_DEFAULT": "generic",
}

# What `make compose-env` writes into .env (fresh random values, one set per test run): the variables Compose
# interpolates the file with here.
COMPOSE_ENV = compose_env.generate()
# Names of environment variables, JSON fields and command-line options that hold a credential ...
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|KEY|TOKEN|FERNET|JWT|ACCESS|CREDENTIAL|PRIVATE", re.IGNORECASE)
# ... unless they name where one is kept or how it is used.
NOT_A_SECRET_NAME = re.compile(r"(FILE|PATH|DIR|CMD|MODE)$", re.IGNORECASE)
# Compose's interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message},
# ${NAME?message}, ${NAME:+alternative}, ${NAME+alternative}, $NAME.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# The only form a credential may take: a required variable, so that Compose refuses to start without its value.
REQUIRED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):?\?[^}]*\}")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")
KNOWN_KEY_FORMATS = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")
# Host ports published on another address than 127.0.0.1: service -> why (none so far).
PUBLIC_PORTS: dict[str, str] = {}


# --- loading ----------------------------------------------------------------------------------------------------------


@cache
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as vendored by the check-jsonschema package."""
    try:
        vendor = files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.fail("check-jsonschema is not installed: `pip install -r requirements.txt -c constraints.txt`")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    return schema


def load_compose() -> dict[str, Any]:
    """docker-compose.yaml with its anchors and merge keys resolved (as Compose reads it); a fresh copy each call."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `services` mapping."""
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


class MissingVariable(LookupError):
    """A required variable without a value: Compose refuses to start."""


def interpolate(text: str, variables: Mapping[str, str] | None = None) -> str:
    """`text` as Compose interpolates it with `variables` (by default COMPOSE_ENV, what `make compose-env` writes,
    and nothing else of this process's environment); a required variable without a value raises MissingVariable."""
    env = COMPOSE_ENV if variables is None else variables

    def value_of(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name, op, arg = match.group("name") or match.group("bare"), match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op is None:
            return value or ""
        present = bool(value) if op.startswith(":") else value is not None
        if op.endswith("-"):
            return value if present and value is not None else arg
        if op.endswith("+"):
            return arg if present else ""
        if not present or value is None:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        return value

    return INTERPOLATION.sub(value_of, text)


def project_image(compose: dict[str, Any]) -> str:
    """The tag of the project image (docker/Dockerfile)."""
    image: str = compose["x-project-image"]["image"]
    return image


def airflow_connections(compose: dict[str, Any]) -> dict[str, str]:
    """The AIRFLOW_CONN_* variables that airflow-init imports into the metadata database."""
    return environment({"environment": compose["x-airflow-connections"]})


def connection(compose: dict[str, Any], variable: str) -> dict[str, Any]:
    """One connection's JSON, interpolated as Compose does with the generated .env."""
    parsed: dict[str, Any] = json.loads(interpolate(airflow_connections(compose)[variable]))
    return parsed


def dockerfile_copies(stage: str) -> dict[str, str]:
    """`COPY --from=<stage> SOURCE TARGET` lines of docker/Dockerfile: source -> target."""
    pattern = rf"^COPY (?:--\S+ )*--from={re.escape(stage)} (\S+) (\S+)$"
    return dict(re.findall(pattern, PROJECT_DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE))


# --- checkers: each returns the problems it finds ---------------------------------------------------------------------


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Violations of the Compose Specification."""
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def published_host_ports(service: dict[str, Any]) -> list[tuple[int, str]]:
    """(host port, protocol) for every port a service publishes, short and long syntax, ranges expanded."""
    published: list[tuple[int, str]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            host, protocol = entry.get("published"), entry.get("protocol", "tcp")
        else:
            spec, _, protocol = str(entry).partition("/")
            parts = spec.rsplit(":", 2)  # [host_ip:]host:container, or a container port alone
            host = parts[-2] if len(parts) >= 2 else None
        if host in (None, ""):
            continue  # no host port: Docker picks a free one
        first, _, last = str(host).partition("-")
        published.extend((port, protocol or "tcp") for port in range(int(first), int(last or first) + 1))
    return published


def port_clashes(services: dict[str, dict[str, Any]]) -> dict[tuple[int, str], list[str]]:
    """Host ports that more than one service (or one service twice) publishes."""
    owners: dict[tuple[int, str], list[str]] = {}
    for name, service in services.items():
        for port in published_host_ports(service):
            owners.setdefault(port, []).append(name)
    return {port: names for port, names in owners.items() if len(names) > 1}


def dependency_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    """depends_on targets that are missing, gated on a health check they lack, or one-shots that restart."""
    problems = []
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {target: {"condition": "service_started"} for target in depends_on}
        for target, spec in depends_on.items():
            if target not in services:
                problems.append(f"{name} depends on undefined service {target}")
                continue
            condition = (spec or {}).get("condition", "service_started")
            check = services[target].get("healthcheck") or {}
            if condition == "service_healthy" and (
                not check.get("test") or check.get("disable") or check.get("test") in ("NONE", ["NONE"])
            ):
                problems.append(f"{name} waits for {target} to be healthy, but {target} has no healthcheck")
            if condition == "service_completed_successfully" and services[target].get("restart") in (
                "always",
                "unless-stopped",
            ):
                problems.append(f"{name} waits for one-shot {target} to complete, but {target} restarts")
    return problems


def port_binding_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    """Ports published on another host address than 127.0.0.1 (no address: every interface), and host networking,
    unless PUBLIC_PORTS says why."""
    problems = []
    for name, service in services.items():
        if name in PUBLIC_PORTS:
            continue
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host binds the host's interfaces")
        for entry in service.get("ports", []):
            if isinstance(entry, dict):
                address = entry.get("host_ip")
            else:
                parts = str(entry).partition("/")[0].rsplit(":", 2)  # [host_ip:][host:]container
                address = parts[0] if len(parts) == 3 else None
            if address != "127.0.0.1":
                problems.append(f"{name}: {entry!r} is published on {address or 'every interface'}, not 127.0.0.1")
    return problems


def _scalars(node: Any, where: str = "") -> Iterator[tuple[str, str | None, Any]]:
    """Every scalar of a YAML tree with its path and the mapping key it is the value of (None in a list); mapping
    keys themselves are yielded as strings without a key."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{where}/{key}", None, str(key)
            if isinstance(value, (dict, list)):
                yield from _scalars(value, f"{where}/{key}")
            else:
                yield f"{where}/{key}", str(key), value
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, (dict, list)):
                yield from _scalars(value, f"{where}/{index}")
            else:
                yield f"{where}/{index}", None, value


def _is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not NOT_A_SECRET_NAME.search(name)


def _credential_problem(where: str, value: Any) -> str | None:
    """Why a credential's value is not allowed, or None: it must be one required variable, ${NAME:?message}."""
    if value is None or value == "":
        return f"{where}: no value (a credential must be ${{NAME:?...}}, so that Compose refuses to start without it)"
    if REQUIRED_VARIABLE.fullmatch(str(value)) is None:
        return f"{where}: {str(value)!r} is not a required variable ${{NAME:?...}}"
    return None


def _json_credential_problems(where: str, text: str) -> list[str]:
    """Credentials in a JSON value (an Airflow connection): secret-named fields, and an aws connection's login (the
    access key id)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return []
    problems = []
    objects = [parsed]
    while objects:
        node = objects.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    objects.append(value)
                elif _is_secret_name(key) or (key == "login" and node.get("conn_type") == "aws"):
                    problems.append(_credential_problem(f"{where} (JSON field {key})", value))
        elif isinstance(node, list):
            objects.extend(node)
    return [problem for problem in problems if problem]


def _words(value: Any) -> list[str]:
    """A command, entrypoint or healthcheck as words; a word with spaces in it (a `bash -c` script, CMD-SHELL) split
    again as the shell would."""
    words = [str(word) for word in value] if isinstance(value, list) else [str(value)]
    result: list[str] = []
    for word in words:
        if any(space in word for space in " \n\t"):
            lexer = shlex.shlex(word, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            try:
                result.extend(lexer)
            except ValueError:
                result.extend(word.split())
        else:
            result.append(word)
    return result


def _argument_problems(where: str, words: list[str]) -> list[str]:
    """Credentials on a command line: `--password=X`, `--token X`, `NAME=X` with a secret's name."""
    problems = []
    for index, word in enumerate(words):
        name, equals, value = word.partition("=")
        option = name.lstrip("-")
        if equals and option and re.fullmatch(r"-{0,2}[A-Za-z_][\w.-]*", name) and _is_secret_name(option):
            problems.append(_credential_problem(f"{where}: {name}=", value))
        elif not equals and word.startswith("-") and _is_secret_name(option) and index + 1 < len(words):
            problems.append(_credential_problem(f"{where}: {word}", words[index + 1]))
    return [problem for problem in problems if problem]


def literal_credentials(document: dict[str, Any]) -> list[str]:
    """Every credential the file holds that is not a required variable (`${NAME:?message}`): the values of
    secret-named keys (environment, build arguments, anchors), `NAME=value` items and command-line options, passwords
    in URLs, credentials in JSON (the Airflow connections), any interpolation of a secret-named variable with a
    default or without `?`, and known key formats anywhere."""
    problems: list[str | None] = []
    for where, key, value in _scalars(document):
        if key is not None and _is_secret_name(key):
            problems.append(_credential_problem(where, value))
        if not isinstance(value, str):
            continue
        if key is None:  # a list item: `NAME=value` in an environment list or on a command line
            problems += _argument_problems(where, [value])
        for match in INTERPOLATION.finditer(value):
            name = match.group("name") or match.group("bare")
            if name and _is_secret_name(name) and not (match.group("op") or "").endswith("?"):
                problems.append(f"{where}: {match.group(0)} is optional (use ${{{name}:?...}})")
        for match in URL_PASSWORD.finditer(value):
            problems.append(_credential_problem(f"{where} (password in a URL)", match.group("password")))
        if value.lstrip().startswith("{"):
            problems += _json_credential_problems(where, value)
        if KNOWN_KEY_FORMATS.search(value):
            problems.append(f"{where}: looks like a real key")
    for name, service in document.get("services", {}).items():
        for field in ("entrypoint", "command"):
            if service.get(field) is not None:
                problems += _argument_problems(f"services/{name}/{field}", _words(service[field]))
        test = (service.get("healthcheck") or {}).get("test")
        if test is not None:
            problems += _argument_problems(f"services/{name}/healthcheck", _words(test))
    return sorted({problem for problem in problems if problem})


def variable_uses(document: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, variable, operator) for every interpolation in the file; the operator is '' for ${NAME} and $NAME."""
    for where, _, value in _scalars(document):
        for match in INTERPOLATION.finditer(value) if isinstance(value, str) else ():
            name = match.group("name") or match.group("bare")
            if name:
                yield where, name, match.group("op") or ""


def variable_problems(document: dict[str, Any], produced: Mapping[str, str]) -> list[str]:
    """Variables the file needs that `produced` (what `make compose-env` writes) lacks: each required one, and each
    one used without a default; and secrets the generator writes that the file never uses."""
    problems = set()
    used = set()
    for where, name, op in variable_uses(document):
        used.add(name)
        if not op.endswith("-") and name not in produced:
            needed = "required" if op.endswith("?") else "used without a default"
            problems.add(f"{where}: {name} is {needed}, but make compose-env does not write it")
    problems |= {f"make compose-env writes {name}, which the file never uses" for name in set(produced) - used}
    return sorted(problems)


def missing_required(document: dict[str, Any], variables: Mapping[str, str]) -> set[str]:
    """The required variables that stop Compose (interpolation fails) when only `variables` are set."""
    missing = set()
    for _, value in ((where, value) for where, _, value in _scalars(document) if isinstance(value, str)):
        for match in INTERPOLATION.finditer(value):
            try:
                interpolate(match.group(0), variables)
            except MissingVariable:
                missing.add(match.group("name"))
    return missing


# --- the Compose Specification ----------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda doc: doc["services"]["kafka"].update(bogus_key=1), "bogus_key"),
        (lambda doc: doc["services"]["mlflow"]["depends_on"]["s3"].update(condition="service_ready"), "depends_on"),
        (lambda doc: doc["services"]["kafka"]["healthcheck"].update(interval=15), "interval"),
    ],
    ids=["unknown-service-key", "bad-depends-on-condition", "duration-as-number"],
)
def test_schema_validation_rejects_broken_copies(compose: dict[str, Any], mutation: Any, expected: str) -> None:
    broken = copy.deepcopy(compose)
    mutation(broken)
    errors = schema_errors(broken)
    assert errors, "the schema accepted a broken compose file"
    assert any(expected in error for error in errors), errors


# --- services, images, Dockerfiles ------------------------------------------------------------------------------------


def test_all_services_of_the_stack_are_defined(services: dict[str, dict[str, Any]]) -> None:
    assert REQUIRED_SERVICES <= services.keys(), REQUIRED_SERVICES - services.keys()


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name, service in services.items() if not (service.get("image") or service.get("build"))] == []


def test_every_build_names_an_existing_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    builds = {name: service["build"] for name, service in services.items() if "build" in service}
    assert builds, "no service builds an image"
    for name, build in builds.items():
        build = {"context": build} if isinstance(build, str) else build
        context = REPO_ROOT / build.get("context", ".")
        assert context.is_dir(), f"{name}: build context {context} is missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def test_project_dockerfile_copies_only_what_exists() -> None:
    text = PROJECT_DOCKERFILE.read_text(encoding="utf-8")
    sources = [
        source
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in [word for word in line.split()[1:] if not word.startswith("--")][:-1]
    ]
    assert {"requirements.txt", "constraints.txt", "ml/", "plugins/", "dags/", "stack/"} <= set(sources)
    # The jars come from the stack's own Maven projects; the metastore's entry point from docker/.
    assert {
        "stack/maven/spark-s3a-pom.xml",
        "stack/maven/postgresql-pom.xml",
        "stack/maven/spark-lineage-pom.xml",
        "docker/hive_metastore_conf.py",
    } <= set(sources)
    assert [source for source in sources if not (REPO_ROOT / source).exists()] == []


def test_images_pin_the_versions_the_project_pins(services: dict[str, dict[str, Any]]) -> None:
    requirements = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    airflow_version = re.search(r"^apache-airflow==(\S+)", requirements, re.MULTILINE)
    assert airflow_version is not None
    base = re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:(\S+)-python(\d+\.\d+)$", PROJECT_DOCKERFILE.read_text(), re.M)
    assert base is not None, "docker/Dockerfile must start from apache/airflow:<version>-python<X.Y>"
    assert base.group(1) == airflow_version.group(1)
    assert base.group(2) == "3.11"  # pyproject.toml: requires-python 3.11, like constraints.txt
    versitygw = (REPO_ROOT / "docker" / "versitygw.Dockerfile").read_text(encoding="utf-8")
    assert f"ARG VERSITYGW_VERSION={VERSITYGW_VERSION}" in versitygw
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".stack", ".git", "bench/results", "**/__pycache__", ".env"} <= ignored
    assert not ignored & {"requirements.txt", "constraints.txt", "ml", "plugins", "dags", "stack", "docker"}


def test_project_programs_bypass_the_airflow_entrypoint(compose: dict[str, Any]) -> None:
    """The Airflow image's /entrypoint runs any command but bash/python as `airflow <command>`."""
    for name, service in compose["services"].items():
        if service.get("image") != project_image(compose) or name in AIRFLOW_SERVICES:
            continue
        command = service.get("command")
        program = command[0] if isinstance(command, list) else str(command).split()[0]
        assert service.get("entrypoint", [])[:2] == ["/usr/bin/dumb-init", "--"], (
            f"{name} would run `airflow {program}`"
        )


def test_one_shot_and_serving_commands(services: dict[str, dict[str, Any]]) -> None:
    """The one-shots run once; the prediction service listens for the host and knows which model to serve (the
    programs themselves are resolved in test_docker_compose_entrypoints.py)."""
    from ml.registry.conventions import registered_model_name
    from ml.serve.app import ServeSettings

    one_shots = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shots == {"kafka-init", "stack-init", "mlflow-init", "airflow-init", "hive-metastore-init"}
    assert services["stack-init"]["command"] == ["python", "-m", "stack.init_resources"]
    assert services["kafka-init"]["command"] == ["python", "-m", "stack.init_resources", "--kafka-only"]
    serve = services["serve"]
    assert serve["command"][:3] == ["gunicorn", "--bind", "0.0.0.0:8000"]
    assert serve["command"][-1] == "ml.serve:create_app()"
    # create_app() refuses to start without a model name: the DAG's default dataset and task register this one.
    settings = ServeSettings.from_env({key: interpolate(value) for key, value in environment(serve).items()})
    assert settings.model_name == registered_model_name("penguins", "classification")
    assert services["airflow-apiserver"]["command"] == "api-server"


def test_the_s3_server_notifies_created_objects_to_kafka_once_its_topic_exists(
    services: dict[str, dict[str, Any]],
) -> None:
    from ml.topics import S3_EVENTS
    from stack.services import S3_EVENT_FILTER

    s3 = services["s3"]
    command = s3["command"]
    assert command[command.index("--event-kafka-url") + 1] == "kafka:29094"
    assert command[command.index("--event-kafka-topic") + 1] == S3_EVENTS.name
    filter_path = command[command.index("--event-filter") + 1]
    assert command.index("--event-filter") < command.index("posix"), "a gateway option, before the backend"
    [mounted] = [volume for volume in s3["volumes"] if volume.endswith(f":{filter_path}:ro")]
    assert json.loads((REPO_ROOT / mounted.split(":")[0]).read_text()) == S3_EVENT_FILTER, "the local stack's filter"
    # It exits when its start-up test notification fails: the topic (kafka-init) before it, and Kafka before that.
    assert s3["depends_on"] == {"kafka-init": {"condition": "service_completed_successfully"}}
    assert services["kafka-init"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}


# --- Airflow ----------------------------------------------------------------------------------------------------------


def test_code_folders_are_mounted_into_every_airflow_service(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES:
        mounts = {}
        for volume in services[name].get("volumes", []):
            if isinstance(volume, dict):
                source, target = volume.get("source", ""), volume["target"]
            else:
                source, target = str(volume).split(":")[:2]
            if source.startswith("."):
                mounts[(REPO_ROOT / source).resolve()] = target
        for folder, target in MOUNTED_CODE.items():
            assert mounts.get((REPO_ROOT / folder).resolve()) == target, f"{name}: ./{folder} is not at {target}"


def test_airflow_components_share_one_image_and_environment(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]
    common_env = environment(common)
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        assert (service["image"], service["build"]) == (common["image"], common["build"]), name
        assert service["image"] == project_image(compose), name
        env = environment(service)
        assert {key: env.get(key) for key in common_env} == common_env, f"{name} drifts from x-airflow-common"
    commands = {compose["services"][name]["command"] for name in AIRFLOW_SERVICES if name != "airflow-init"}
    assert commands == {"api-server", "scheduler", "dag-processor", "triggerer"}


def test_airflow_connections_are_json_of_the_expected_types(compose: dict[str, Any]) -> None:
    assert set(airflow_connections(compose)) == set(EXPECTED_CONNECTIONS)
    for variable, conn_type in EXPECTED_CONNECTIONS.items():
        assert connection(compose, variable)["conn_type"] == conn_type, variable
    spark = connection(compose, "AIRFLOW_CONN_SPARK_DEFAULT")
    assert (spark["host"], spark["port"]) == ("spark://spark-master", 7077)
    # The asset watcher's connection: kafka_default's login plus the consumer settings the local stack gives it.
    from stack.airflow_home import DRIFT_EVENTS_CONSUMER, S3_EVENTS_CONSUMER

    kafka_default = connection(compose, "AIRFLOW_CONN_KAFKA_DEFAULT")["extra"]
    watcher = connection(compose, "AIRFLOW_CONN_KAFKA_S3_EVENTS")["extra"]
    assert watcher == {**kafka_default, **S3_EVENTS_CONSUMER}
    drift_watcher = connection(compose, "AIRFLOW_CONN_KAFKA_DRIFT_EVENTS")["extra"]
    assert drift_watcher == {**kafka_default, **DRIFT_EVENTS_CONSUMER}
    # OpenLineage's transport: what the local stack writes, on compose's broker and login.
    from stack.airflow_home import openlineage_connection

    kafka = connection(compose, "AIRFLOW_CONN_KAFKA_DEFAULT")["extra"]
    settings = KafkaSettings(
        kafka["bootstrap.servers"], username=kafka["sasl.username"], password=kafka["sasl.password"]
    )
    expected = json.loads(openlineage_connection(settings)["extra"])
    assert connection(compose, "AIRFLOW_CONN_OPENLINEAGE_DEFAULT")["extra"] == expected
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__OPENLINEAGE__CONFIG_CONN_ID"] == "openlineage_default"


def test_airflow_init_stores_the_connections_and_the_components_do_not_carry_them(compose: dict[str, Any]) -> None:
    """airflow-init imports the connections into the metadata database (as the stack's prepare_airflow_home does);
    the long-running components find them there and carry neither them nor the S3 keys in their environment."""
    from airflow.secrets.local_filesystem import _create_connection

    services = compose["services"]
    init_env = environment(services["airflow-init"])
    assert {key: init_env.get(key) for key in airflow_connections(compose)} == airflow_connections(compose)
    script = services["airflow-init"]["command"][-1]
    assert "airflow connections import --overwrite" in script and "AIRFLOW_CONN_" in script
    for variable in EXPECTED_CONNECTIONS:  # what the import builds from each variable (conn id: the lower-case rest)
        conn_id = variable.removeprefix("AIRFLOW_CONN_").lower()
        assert _create_connection(conn_id, connection(compose, variable)).conn_id == conn_id
    for name in set(AIRFLOW_SERVICES) - {"airflow-init"}:
        env = environment(services[name])
        assert not [key for key in env if key.startswith("AIRFLOW_CONN_") or key.startswith("AWS_")], name


def test_airflow_gets_endpoints_and_keys_only_from_connections(compose: dict[str, Any]) -> None:
    """Airflow's tasks read no endpoint variable (plugins/mlops_airflow/hooks.py): the Airflow services carry none of
    them, as `airflow standalone` in the local stack carries none (stack.services.AIRFLOW_UNSET)."""
    from stack.services import AIRFLOW_UNSET

    for name in AIRFLOW_SERVICES:
        env = environment(compose["services"][name])
        assert not set(AIRFLOW_UNSET) & set(env), f"{name}: {sorted(set(AIRFLOW_UNSET) & set(env))}"


def test_airflow_connections_give_the_tasks_what_the_other_services_use(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read through the hooks, as a task reads them, the connections (placeholders as Compose fills them in) equal
    the settings that `python -m ml` in a project container gets from x-mlops-env."""
    from ml.settings import RaySettings, Settings
    from mlops_airflow.hooks import KafkaEventsHook, MlflowHook, RayHook, s3_settings, spark_settings

    for variable in EXPECTED_CONNECTIONS:
        monkeypatch.setenv(variable, interpolate(airflow_connections(compose)[variable]))
    mlops_env = environment({"environment": compose["x-mlops-env"]})
    project = Settings.from_env({key: interpolate(value) for key, value in mlops_env.items()})
    for conn_id, user in (("aws_default", "PIPELINE"), ("aws_tune", "TUNE")):  # the S3 server's users, not root
        keys = COMPOSE_ENV[f"MLOPS_S3_{user}_ACCESS_KEY"], COMPOSE_ENV[f"MLOPS_S3_{user}_SECRET_KEY"]
        assert s3_settings(conn_id) == dataclasses.replace(project.s3, access_key_id=keys[0], secret_access_key=keys[1])
    assert KafkaEventsHook().settings == project.kafka
    assert MlflowHook().settings == project.mlflow
    # Spark: the same master, jars, networked metastore and cores per job; tasks fix no driver address (the Spark
    # connection test in test_docker_compose_cluster.py), a project container names its own.
    spark = spark_settings("spark_default")
    # (Spark's Kafka source is the drift monitor's, a project container's; no task streams.)
    assert spark == dataclasses.replace(project.spark, local_ip=None, kafka_source_classpath="")
    assert project.spark.metastore_uri and project.spark.metastore_dir is None, "the networked metastore, no Derby"
    # Ray: the head's client port, with the cluster's token.
    ray = RayHook().settings
    assert ray.address == project.ray.address != RaySettings(None).address, "tasks search on the Ray head"
    assert (ray.auth_token, ray.resolved_auth_mode) == (project.ray.auth_token, project.ray.resolved_auth_mode)
    assert project.ray.resolved_auth_mode == "token" and project.ray.auth_token
    airflow_env = environment(compose["x-airflow-common"])
    assert airflow_env["AIRFLOW_VAR_MLOPS_LAKE_BUCKET"] == project.lake.lake_bucket, "the bucket stack-init creates"


# The S3 key each client of the cluster signs with (stack.s3_users): stack-init the root's (it makes the users), the
# others their own user's; the prediction service none (it loads models through MLflow's artifact proxy).
S3_KEY_OF = {
    "stack-init": "MLOPS_S3",
    "mlflow": "MLOPS_S3_MLFLOW",
    "hive-metastore": "MLOPS_S3_PIPELINE",
    "serve": None,
}


def test_project_services_share_the_project_environment(compose: dict[str, Any]) -> None:
    """The clients of the cluster read the same endpoints (the cluster's nodes carry none:
    test_docker_compose_cluster.py), each with the S3 key of its own user."""
    users = [name for name, service in compose["services"].items() if service.get("image") == project_image(compose)]
    assert {*PROJECT_CLIENTS, *AIRFLOW_SERVICES} <= set(users)
    assert set(S3_KEY_OF) == set(PROJECT_CLIENTS)
    for name in PROJECT_CLIENTS:
        env = environment(compose["services"][name])
        drift = {key: env.get(key) for key, value in PROJECT_ENV.items() if env.get(key) != value}
        assert drift == {}, f"{name}: {drift}"
        prefix = S3_KEY_OF[name]
        keys = {env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")}
        expected = (
            {f"${{{prefix}_{kind}_KEY:?run make compose-env first}}" for kind in ("ACCESS", "SECRET")}
            if prefix
            else {None}
        )
        assert keys == expected, f"{name} signs with {keys}"


# --- ports, dependencies, secrets -------------------------------------------------------------------------------------


def test_no_host_port_is_published_twice(services: dict[str, dict[str, Any]]) -> None:
    assert port_clashes(services) == {}
    assert (8080, "tcp") in published_host_ports(services["airflow-apiserver"])
    # Reachable from the containers only: the databases, the metastore (no authentication), Ray's GCS.
    assert not [name for name in ("postgres", "hive-metastore", "ray-worker") if "ports" in services[name]]


def test_port_clash_detection_can_fail(services: dict[str, dict[str, Any]]) -> None:
    broken = copy.deepcopy(services)
    broken["spark-master"]["ports"].append({"target": 8080, "published": "8080"})  # Airflow's port
    broken["ray-head"]["ports"].append("127.0.0.1:8990-9000:8990-9000")  # a range over the S3 port
    assert set(port_clashes(broken)) == {(8080, "tcp"), (9000, "tcp")}


def test_published_ports_bind_the_loopback_address_only(services: dict[str, dict[str, Any]]) -> None:
    """Every port is published on the host's 127.0.0.1 (PUBLIC_PORTS would name an exception and why)."""
    assert port_binding_problems(services) == []
    assert len([name for name, service in services.items() if service.get("ports")]) >= 8


def test_port_binding_check_can_fail(services: dict[str, dict[str, Any]]) -> None:
    broken = copy.deepcopy(services)
    broken["mlflow"]["ports"] = ["5000:5000"]
    broken["serve"]["ports"] = [{"target": 8000, "published": "8000"}]
    broken["kafka"]["ports"].append("0.0.0.0:19092:9092/tcp")
    broken["airflow-apiserver"]["ports"] = ["8080"]  # a random host port, on every interface
    broken["ray-worker"]["network_mode"] = "host"
    problems = port_binding_problems(broken)
    assert len(problems) == 5, problems
    assert "kafka: '0.0.0.0:19092:9092/tcp' is published on 0.0.0.0, not 127.0.0.1" in problems
    assert {problem.split(":")[0] for problem in problems} == {
        "mlflow",
        "serve",
        "kafka",
        "airflow-apiserver",
        "ray-worker",
    }


def test_health_gated_dependencies_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert dependency_problems(services) == []


def test_dependency_check_can_fail(services: dict[str, dict[str, Any]]) -> None:
    broken = copy.deepcopy(services)
    del broken["kafka"]["healthcheck"]
    broken["stack-init"]["restart"] = "always"
    problems = dependency_problems(broken)
    assert any("kafka has no healthcheck" in problem for problem in problems), problems
    assert any("stack-init restarts" in problem for problem in problems), problems


def test_no_credential_is_written_in_the_file(compose: dict[str, Any]) -> None:
    """Every credential is a required variable, so the file carries none and Compose refuses to start without one."""
    assert literal_credentials(compose) == []
    assert not KNOWN_KEY_FORMATS.search(COMPOSE_FILE.read_text(encoding="utf-8"))
    # The checker looks at what matters: the credentials of the file are found as such (and pass as required).
    env = environment(compose["services"]["airflow-init"])
    seen = {key for key in env if _is_secret_name(key)}
    assert {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"} <= seen
    assert {"_AIRFLOW_WWW_USER_PASSWORD", "AWS_ACCESS_KEY_ID"} & seen == {"_AIRFLOW_WWW_USER_PASSWORD"}


def test_every_variable_the_file_uses_is_written_by_make_compose_env(compose: dict[str, Any]) -> None:
    """`make compose-env` + `docker compose up` has every value: each required variable is one the generator
    writes (and each it writes is used); without them Compose stops, naming exactly the credentials."""
    assert variable_problems(compose, COMPOSE_ENV) == []
    assert missing_required(compose, COMPOSE_ENV) == set()
    assert missing_required(compose, {}) == set(compose_env.SECRETS)
    texts = [value for _, _, value in _scalars(compose) if isinstance(value, str)]
    for text in texts:
        interpolate(text)  # raises MissingVariable where Compose would refuse
    messages = {match.group(0) for text in texts for match in REQUIRED_VARIABLE.finditer(text)}
    assert messages and all(message.endswith(":?run make compose-env first}") for message in messages), messages


def test_variable_check_can_fail(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["serve"]["environment"]["MLOPS_SERVE_WORKERS"] = "${MLOPS_SERVE_WORKERS}"
    produced = {key: value for key, value in COMPOSE_ENV.items() if key != "AIRFLOW_JWT_SECRET"}
    problems = variable_problems(broken, {**produced, "MLOPS_UNUSED_TOKEN": "x"})
    assert any("AIRFLOW_JWT_SECRET is required, but make compose-env" in problem for problem in problems), problems
    assert any("MLOPS_SERVE_WORKERS is used without a default" in problem for problem in problems), problems
    assert "make compose-env writes MLOPS_UNUSED_TOKEN, which the file never uses" in problems
    assert missing_required(compose, produced) == {"AIRFLOW_JWT_SECRET"}
    with pytest.raises(MissingVariable, match="AIRFLOW_JWT_SECRET is missing a value: run make compose-env first"):
        interpolate(environment(compose["services"]["airflow-scheduler"])["AIRFLOW__API_AUTH__JWT_SECRET"], produced)


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    cases = {
        "${SET}|$SET|${UNSET}|$$SET|$${SET}": "v|v||$SET|${SET}",
        "${SET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}": "v|d||d",
        "${SET:+a}|${EMPTY:+a}|${EMPTY+a}|${UNSET+a}": "a||a|",
        "${SET:?m}|${EMPTY?m}": "v|",
    }
    for text, expected in cases.items():
        assert interpolate(text, env) == expected, text
    for text in ("${EMPTY:?m}", "${UNSET?m}", "${UNSET:?m}"):
        with pytest.raises(MissingVariable):
            interpolate(text, env)


def test_the_credentials_are_documented_in_the_file_header() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    header = text[: text.index("\n---")]
    assert "make compose-env" in header and "docker compose up" in header
    assert header.index("make compose-env") < header.index("docker compose up")
    for name in compose_env.SECRETS:
        assert re.search(rf"^#\s+{re.escape(name)}\s", header, re.MULTILINE), f"{name} is not documented in the header"


def _replace_in(document: dict[str, Any], path: list[str], old: str, new: str) -> None:
    node: Any = document
    for key in path[:-1]:
        node = node[key]
    assert old in node[path[-1]]
    node[path[-1]] = node[path[-1]].replace(old, new)


FAKE_AWS_KEY_ID = "AKIA" + "Q" * 16  # the format of a real one, assembled so that the repository's scan passes
SECRET_MUTATIONS = {
    "literal-env-secret": (
        lambda doc: doc["services"]["mlflow"]["environment"].update(AWS_SECRET_ACCESS_KEY="s3cr3t-from-prod"),
        "services/mlflow/environment/AWS_SECRET_ACCESS_KEY: 's3cr3t-from-prod' is not a required variable",
    ),
    "secret-with-a-default": (
        lambda doc: doc["services"]["postgres"]["environment"].update(
            POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-hunter2}"
        ),
        "${POSTGRES_PASSWORD:-hunter2} is optional",
    ),
    "optional-secret": (
        lambda doc: doc["services"]["s3"]["environment"].update(ROOT_SECRET_KEY="${MLOPS_S3_SECRET_KEY}"),
        "${MLOPS_S3_SECRET_KEY} is optional",
    ),
    "empty-fernet-key": (
        lambda doc: doc["services"]["airflow-scheduler"]["environment"].update(AIRFLOW__CORE__FERNET_KEY=""),
        "AIRFLOW__CORE__FERNET_KEY: no value",
    ),
    "password-in-url": (
        lambda doc: doc["services"]["mlflow"]["command"].append("postgresql://mlflow:hunter2@postgres/mlflow"),
        "(password in a URL): 'hunter2'",
    ),
    "airflow-database-password-in-url": (
        lambda doc: _replace_in(
            doc,
            ["services", "airflow-scheduler", "environment", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
            "${AIRFLOW_DB_PASSWORD:?run make compose-env first}",
            "airflow",
        ),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (password in a URL): 'airflow'",
    ),
    "access-key-in-a-connection": (
        lambda doc: _replace_in(
            doc,
            ["services", "airflow-init", "environment", "AIRFLOW_CONN_AWS_DEFAULT"],
            "${MLOPS_S3_PIPELINE_ACCESS_KEY:?run make compose-env first}",
            "mlops-0123abcd",
        ),
        "(JSON field login): 'mlops-0123abcd'",
    ),
    "token-in-a-connection": (
        lambda doc: _replace_in(
            doc,
            ["services", "airflow-init", "environment", "AIRFLOW_CONN_RAY_DEFAULT"],
            "${MLOPS_RAY_AUTH_TOKEN:?run make compose-env first}",
            "hunter2",
        ),
        "(JSON field password): 'hunter2'",
    ),
    "password-option": (
        lambda doc: doc["services"]["mlflow"]["command"].append("--password=hunter2"),
        "services/mlflow/command: --password=: 'hunter2'",
    ),
    "token-option-and-value": (
        lambda doc: doc["services"]["ray-head"]["command"].extend(["--auth-token", "hunter2"]),
        "services/ray-head/command: --auth-token: 'hunter2'",
    ),
    "secret-in-a-shell-script": (
        lambda doc: doc["services"]["airflow-init"]["command"].append("export AWS_SECRET_ACCESS_KEY=hunter2; true"),
        "AWS_SECRET_ACCESS_KEY=: 'hunter2'",
    ),
    "environment-list-syntax": (
        lambda doc: doc["services"]["serve"].update(environment=["MLOPS_SERVE_MODEL=m", "RAY_AUTH_TOKEN=hunter2"]),
        "services/serve/environment/1: RAY_AUTH_TOKEN=: 'hunter2'",
    ),
    "build-argument": (
        lambda doc: doc["services"]["s3"]["build"].update(args={"ROOT_SECRET_KEY": "hunter2"}),
        "services/s3/build/args/ROOT_SECRET_KEY: 'hunter2'",
    ),
    "known-key-format": (
        lambda doc: doc["services"]["kafka"]["environment"].update(CLUSTER_ID=FAKE_AWS_KEY_ID),
        "services/kafka/environment/CLUSTER_ID: looks like a real key",
    ),
}


@pytest.mark.parametrize("case", list(SECRET_MUTATIONS), ids=list(SECRET_MUTATIONS))
def test_credential_check_can_fail(compose: dict[str, Any], case: str) -> None:
    mutate, expected = SECRET_MUTATIONS[case]
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = literal_credentials(broken)
    assert any(expected in problem for problem in problems), problems
