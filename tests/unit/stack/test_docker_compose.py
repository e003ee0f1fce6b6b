"""docker-compose.yaml and the images it builds: checked without Docker.

The file is validated against the Compose Specification's JSON Schema, taken from the `check-jsonschema` package (which
vendors it), never from a copy in this repository. The other checks cover what the schema cannot see: images and
Dockerfiles, mounted code, host ports, health-gated dependencies, one Airflow image and environment, the connections,
and secrets. Each checker is a plain function that returns what is wrong, and the tests also feed it broken copies to
show that it does fail. More in test_docker_compose_entrypoints.py (every program a service names resolves) and
test_docker_compose_cluster.py (the cluster profile's architecture); both load the file through `load_compose`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

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
    "AIRFLOW_CONN_SPARK_DEFAULT": "spark",
    "AIRFLOW_CONN_KAFKA_DEFAULT": "kafka",
    "AIRFLOW_CONN_MLFLOW_DEFAULT": "http",
    "AIRFLOW_CONN_RAY_DEFAULT": "generic",
}

# The only secret values docker-compose.yaml may contain: placeholder defaults for local use, listed in its header.
PLACEHOLDER_SECRETS = frozenset(
    {
        "mlops-local-access-key",
        "local-only-s3-secret-change-me",
        "local-only-postgres-change-me",
        "airflow",
        "mlflow",
        "metastore",
        "local-only-ray-token-change-me",
        "local-only-jwt-secret-change-me-0123456789abcdef0123456789abcdef",
        "local-only-api-secret-change-me",
        "bG9jYWwtb25seS1mZXJuZXQta2V5LWNoYW5nZS1tZSE=",  # base64 of "local-only-fernet-key-change-me!"
    }
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|FERNET_KEY|TOKEN|CREDENTIAL", re.IGNORECASE)
NOT_A_SECRET_NAME = re.compile(r"_(FILE|PATH|CMD)$")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<default>[^}]*))?\}")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")
KNOWN_KEY_FORMATS = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")


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


def with_defaults(text: str) -> str:
    """`text` as Compose interpolates it when no variable is set: ${VAR:-default} -> default, ${VAR} -> ''."""
    return INTERPOLATION.sub(lambda match: match.group("default") or "", text)


def project_image(compose: dict[str, Any]) -> str:
    """The tag of the project image (docker/Dockerfile)."""
    image: str = compose["x-project-image"]["image"]
    return image


def airflow_connections(compose: dict[str, Any]) -> dict[str, str]:
    """The AIRFLOW_CONN_* variables that airflow-init imports into the metadata database."""
    return environment({"environment": compose["x-airflow-connections"]})


def connection(compose: dict[str, Any], variable: str) -> dict[str, Any]:
    """One connection's JSON, placeholders filled in as Compose does when no variable is set."""
    parsed: dict[str, Any] = json.loads(with_defaults(airflow_connections(compose)[variable]))
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


def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a YAML tree (keys and values), with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{where}/{key}", str(key)
            yield from _strings(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{where}/{index}")
    elif isinstance(node, str):
        yield where, node


def _check_secret_value(where: str, value: str) -> str | None:
    """Why a value in a secret's place is not allowed, or None: it must be a ${VAR[:-placeholder]} interpolation."""
    match = INTERPOLATION.fullmatch(value)
    if match is None:
        return f"{where}: literal secret {value!r} (use ${{VAR:-placeholder}})"
    default = match.group("default")
    if default is not None and default and default not in PLACEHOLDER_SECRETS:
        return f"{where}: default {default!r} of ${{{match.group('name')}}} is not a documented placeholder"
    return None


def literal_secrets(document: dict[str, Any]) -> list[str]:
    """Secrets written into the file instead of interpolated with a documented placeholder default."""
    problems = []
    for name, service in document.get("services", {}).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not NOT_A_SECRET_NAME.search(key) and value:
                problem = _check_secret_value(f"services/{name}/environment/{key}", value)
                if problem:
                    problems.append(problem)
    for where, text in _strings(document):
        for match in INTERPOLATION.finditer(text):
            default = match.group("default")
            if SECRET_NAME.search(match.group("name")) and default and default not in PLACEHOLDER_SECRETS:
                problems.append(f"{where}: default {default!r} of ${{{match.group('name')}}} is not a placeholder")
        for match in URL_PASSWORD.finditer(text):
            problem = _check_secret_value(f"{where} (password in a URL)", match.group("password"))
            if problem:
                problems.append(problem)
        if KNOWN_KEY_FORMATS.search(text):
            problems.append(f"{where}: looks like a real key")
    return problems


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
    assert one_shots == {"stack-init", "airflow-init", "hive-metastore-init"}
    assert services["stack-init"]["command"] == ["python", "-m", "stack.init_resources"]
    serve = services["serve"]
    assert serve["command"][:3] == ["gunicorn", "--bind", "0.0.0.0:8000"]
    assert serve["command"][-1] == "ml.serve:create_app()"
    # create_app() refuses to start without a model name: the DAG's default dataset and task register this one.
    settings = ServeSettings.from_env({key: with_defaults(value) for key, value in environment(serve).items()})
    assert settings.model_name == registered_model_name("penguins", "classification")
    assert services["airflow-apiserver"]["command"] == "api-server"


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
        monkeypatch.setenv(variable, with_defaults(airflow_connections(compose)[variable]))
    mlops_env = environment({"environment": compose["x-mlops-env"]})
    project = Settings.from_env({key: with_defaults(value) for key, value in mlops_env.items()})
    assert s3_settings("aws_default") == project.s3
    assert KafkaEventsHook().settings == project.kafka
    assert MlflowHook().settings == project.mlflow
    # Spark: the same master, jars, networked metastore and cores per job; tasks fix no driver address (the Spark
    # connection test in test_docker_compose_cluster.py), a project container names its own.
    spark = spark_settings("spark_default")
    assert spark == dataclasses.replace(project.spark, local_ip=None)
    assert project.spark.metastore_uri and project.spark.metastore_dir is None, "the networked metastore, no Derby"
    # Ray: the head's client port, with the cluster's token.
    ray = RayHook().settings
    assert ray.address == project.ray.address != RaySettings(None).address, "tasks search on the Ray head"
    assert (ray.auth_token, ray.resolved_auth_mode) == (project.ray.auth_token, project.ray.resolved_auth_mode)
    assert project.ray.resolved_auth_mode == "token" and project.ray.auth_token
    airflow_env = environment(compose["x-airflow-common"])
    assert airflow_env["AIRFLOW_VAR_MLOPS_LAKE_BUCKET"] == project.lake.lake_bucket, "the bucket stack-init creates"


def test_project_services_share_the_project_environment(compose: dict[str, Any]) -> None:
    """The clients of the cluster read the same endpoints and S3 keys (the cluster's nodes carry neither:
    test_docker_compose_cluster.py)."""
    users = [name for name, service in compose["services"].items() if service.get("image") == project_image(compose)]
    assert {*PROJECT_CLIENTS, *AIRFLOW_SERVICES} <= set(users)
    for name in PROJECT_CLIENTS:
        env = environment(compose["services"][name])
        drift = {key: env.get(key) for key, value in PROJECT_ENV.items() if env.get(key) != value}
        assert drift == {}, f"{name}: {drift}"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys(), name


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


def test_health_gated_dependencies_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert dependency_problems(services) == []


def test_dependency_check_can_fail(services: dict[str, dict[str, Any]]) -> None:
    broken = copy.deepcopy(services)
    del broken["kafka"]["healthcheck"]
    broken["stack-init"]["restart"] = "always"
    problems = dependency_problems(broken)
    assert any("kafka has no healthcheck" in problem for problem in problems), problems
    assert any("stack-init restarts" in problem for problem in problems), problems


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    assert literal_secrets(compose) == []
    assert not KNOWN_KEY_FORMATS.search(COMPOSE_FILE.read_text(encoding="utf-8"))


def test_placeholders_are_documented_in_the_file_header() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    header = text[: text.index("\n---")]
    assert "docker compose up" in header
    for placeholder in PLACEHOLDER_SECRETS:
        assert placeholder in header, f"placeholder {placeholder!r} is not documented in the header"


@pytest.mark.parametrize(
    "mutation",
    [
        lambda doc: doc["services"]["mlflow"]["environment"].update(AWS_SECRET_ACCESS_KEY="s3cr3t-from-prod"),
        lambda doc: doc["services"]["postgres"]["environment"].update(
            POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-hunter2}"
        ),
        lambda doc: doc["services"]["mlflow"]["command"].append("postgresql://mlflow:hunter2@postgres/mlflow"),
    ],
    ids=["literal-env-secret", "undocumented-default", "password-in-url"],
)
def test_secret_check_can_fail(compose: dict[str, Any], mutation: Any) -> None:
    broken = copy.deepcopy(compose)
    mutation(broken)
    assert literal_secrets(broken), "a literal secret went unnoticed"
