"""docker-compose.yaml describes the cluster profile's architecture (stack/cluster/, docs in ../shared/DESIGN.md):
PostgreSQL with the Airflow, MLflow and metastore databases, Airflow's components on it, a Hive metastore service on
it, a Spark standalone master with two 1-core workers, a Ray head and worker node with token authentication, MLflow,
S3, Kafka and the prediction service. Checked without Docker: each checker returns what is wrong, and broken copies
show that it fails.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import stat
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest

from tests.unit.stack.test_docker_compose import (
    AIRFLOW_SERVICES,
    REPO_ROOT,
    REQUIRED_SERVICES,
    connection,
    dockerfile_copies,
    environment,
    interpolate,
    load_compose,
)

# The cluster's nodes: they run the jobs of others and carry neither the project's code nor its S3 keys.
CLUSTER_NODES = ("spark-master", "spark-worker-1", "spark-worker-2", "ray-head", "ray-worker")
SPARK_WORKERS = ("spark-worker-1", "spark-worker-2")
RAY_NODES = ("ray-head", "ray-worker")
# Who must wait for whom: (waiting service, service it needs).
REQUIRED_WAITS = {
    ("airflow-init", "postgres"),
    *{(name, "postgres") for name in AIRFLOW_SERVICES},
    *{(name, "airflow-init") for name in AIRFLOW_SERVICES if name != "airflow-init"},
    ("airflow-scheduler", "airflow-apiserver"),
    ("airflow-scheduler", "hive-metastore"),
    ("airflow-scheduler", "spark-master"),
    ("airflow-scheduler", "ray-head"),
    ("airflow-scheduler", "mlflow-init"),
    ("mlflow-init", "mlflow"),
    ("hive-metastore-init", "postgres"),
    ("hive-metastore", "hive-metastore-init"),
    ("hive-metastore", "postgres"),
    ("hive-metastore", "s3"),
    ("mlflow", "postgres"),
    ("mlflow", "s3"),
    *{(worker, "spark-master") for worker in SPARK_WORKERS},
    ("ray-worker", "ray-head"),
    ("serve", "mlflow-init"),
    ("stack-init", "s3"),
    ("stack-init", "kafka"),
}
INIT_SCRIPT = REPO_ROOT / "docker" / "postgres" / "init-databases.sh"
METASTORE_CONF_SCRIPT = REPO_ROOT / "docker" / "hive_metastore_conf.py"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def option(argv: list[str], name: str) -> str | None:
    """The value of `name` in a command line (`--name value` or `--name=value`), None when absent."""
    for index, word in enumerate(argv):
        if word == name and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def command(compose: dict[str, Any], name: str) -> list[str]:
    return [interpolate(str(word)) for word in compose["services"][name]["command"]]


def filled_environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: interpolate(value) for key, value in environment(service).items()}


# --- checkers ---------------------------------------------------------------------------------------------------------


def architecture_problems(compose: dict[str, Any]) -> list[str]:
    """Missing services, missing waits, and long-running services that others wait for without a healthcheck."""
    services = compose["services"]
    problems = [f"no service {name}" for name in sorted(REQUIRED_SERVICES - services.keys())]
    waits = {
        (name, target): (spec or {}).get("condition", "service_started")
        for name, service in services.items()
        for target, spec in (service.get("depends_on") or {}).items()
    }
    problems += [f"{name} does not wait for {target}" for name, target in sorted(REQUIRED_WAITS - waits.keys())]
    for (name, target), condition in sorted(waits.items()):
        if target not in services:
            continue
        one_shot = services[target].get("restart") == "no"
        expected = "service_completed_successfully" if one_shot else "service_healthy"
        if condition != expected:
            problems.append(f"{name} waits for {target} with {condition}, not {expected}")
        if not one_shot and not (services[target].get("healthcheck") or {}).get("test"):
            problems.append(f"{name} waits for {target}, which has no healthcheck")
    return problems


def _init_script_databases() -> dict[str, str]:
    """database (= role) -> the variable of its password, as docker/postgres/init-databases.sh creates them."""
    text = INIT_SCRIPT.read_text(encoding="utf-8")
    return dict(re.findall(r'^create_database (\w+) "\$\{(\w+):\?', text, re.MULTILINE))


def _password_variable(value: str) -> str | None:
    """The variable of a required `${NAME:?message}` value (a credential has no default), else None."""
    match = re.fullmatch(r"\$\{(\w+):\?[^}]*\}", value)
    return match.group(1) if match else None


def database_problems(compose: dict[str, Any]) -> list[str]:
    """Airflow's metadata DB, MLflow's backend and the metastore's JDO URL on the postgres service, each in its own
    database with its own role, whose password is the variable the init script creates the role with."""
    services = compose["services"]
    postgres = services["postgres"]
    postgres_env = environment(postgres)
    databases = _init_script_databases()
    problems = []
    mounts = [str(volume) for volume in postgres.get("volumes", [])]
    if not any(m.startswith("./docker/postgres/init-databases.sh:/docker-entrypoint-initdb.d/") for m in mounts):
        problems.append("postgres does not run docker/postgres/init-databases.sh")
    for database, variable in databases.items():
        if _password_variable(postgres_env.get(variable, "")) != variable:
            problems.append(f"postgres does not pass {variable} (the {database} role's password) to its init script")
    mlflow_env = environment(services["mlflow"])
    urls = {
        "airflow": (
            "airflow-scheduler",
            environment(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        ),
        "mlflow": ("mlflow", mlflow_env.get("MLFLOW_BACKEND_STORE_URI") or ""),
    }
    for name in ("hive-metastore", "hive-metastore-init"):
        env = environment(services[name])
        url = env.get("METASTORE_JDBC_URL", "").removeprefix("jdbc:")
        user, password = env.get("METASTORE_DB_USER", ""), env.get("METASTORE_DB_PASSWORD", "")
        urls[f"metastore ({name})"] = (name, url.replace("://", f"://{user}:{password}@", 1) if "://" in url else url)
    for what, (service, url) in urls.items():
        database = what.split()[0]
        # The password is a `${NAME:?message}`, which a URL parser would take for a port and a query: mask it.
        parts = urlsplit(re.sub(r"(://[^:/@]+:)[^@]*@", r"\1password@", url, count=1))
        if not parts.scheme.startswith("postgresql"):
            problems.append(f"{service}: the {database} database is not PostgreSQL: {url!r}")
            continue
        if (parts.hostname, parts.port or 5432, parts.path.lstrip("/")) != ("postgres", 5432, database):
            problems.append(f"{service}: {url!r} is not postgres:5432/{database}")
        if parts.username != database:
            problems.append(f"{service}: connects as {parts.username!r}, not as the {database} role")
        in_url = re.search(r"://[^:/@]+:([^@]*)@", url)
        wanted = databases.get(database)
        if wanted is None or in_url is None or _password_variable(in_url.group(1)) != wanted:
            problems.append(f"{service}: the {database} password is not ${{{wanted}:?...}}")
    return problems


def ray_problems(compose: dict[str, Any]) -> list[str]:
    """Token authentication on every Ray node with one token, which ray_default carries too (Airflow's components
    have no token of their own: the tune task connects with the connection's); the worker joins the head's GCS port;
    ray_default and the project clients use the head's client port; the head keeps a finished run's actors as long as
    the local cluster does."""
    from stack.cluster.ray import FINISHED_JOB_ACTORS_KEPT_MS

    services = compose["services"]
    head = command(compose, "ray-head")
    problems = []
    tokens = {}
    for name in AIRFLOW_SERVICES:
        if {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(environment(services[name])):
            problems.append(f"{name}: a Ray token in its environment (the tasks take ray_default's)")
    for name in RAY_NODES:
        env = environment(services[name])
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{name}: RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}, not token")
        tokens[name] = env.get("RAY_AUTH_TOKEN")
    if environment(services["ray-head"]).get("RAY_gcs_actor_table_min_duration_ms") != str(FINISHED_JOB_ACTORS_KEPT_MS):
        problems.append("ray-head: a finished job's actors are not kept as long as on the local cluster")
    ray_default = connection(compose, "AIRFLOW_CONN_RAY_DEFAULT")
    token = interpolate(str(tokens.get("ray-head")))
    if not token or _password_variable(str(tokens.get("ray-head"))) is None:
        problems.append("ray-head: the token is not a required ${VAR:?...}")
    problems += [f"{name}: another Ray token" for name, value in tokens.items() if value != tokens.get("ray-head")]
    if ray_default.get("password") != token:
        problems.append("ray_default: its password is not the cluster's token")
    client = f"ray://ray-head:{option(head, '--ray-client-server-port')}"
    if ray_default.get("extra", {}).get("address") != client:
        problems.append(f"ray_default: its address is not {client}")
    if environment({"environment": compose["x-mlops-env"]}).get("RAY_ADDRESS") != client:
        problems.append(f"x-mlops-env: RAY_ADDRESS is not {client}")
    if option(command(compose, "ray-worker"), "--address") != f"ray-head:{option(head, '--port')}":
        problems.append("ray-worker does not join the head's GCS port")
    return problems


# --- tests ------------------------------------------------------------------------------------------------------------


def test_every_service_of_the_cluster_exists_and_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    assert architecture_problems(compose) == []


def test_the_databases_live_on_the_postgres_service(compose: dict[str, Any]) -> None:
    from stack.cluster import DATABASES

    assert database_problems(compose) == []
    assert set(_init_script_databases()) == set(DATABASES), "the cluster profile's databases"
    assert INIT_SCRIPT.stat().st_mode & stat.S_IXUSR, "the image runs executable init scripts, sources the others"


def test_ray_nodes_and_airflow_share_one_token(compose: dict[str, Any]) -> None:
    assert ray_problems(compose) == []


def _remove(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _set(path: list[str | int], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


SERVICES = "services"
BROKEN_COPIES: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], list[str]], str]] = {
    "missing-worker": (_remove([SERVICES, "spark-worker-2"]), architecture_problems, "no service spark-worker-2"),
    "metastore-without-healthcheck": (
        _remove([SERVICES, "hive-metastore", "healthcheck"]),
        architecture_problems,
        "hive-metastore, which has no healthcheck",
    ),
    "metastore-before-its-schema": (
        _remove([SERVICES, "hive-metastore", "depends_on", "hive-metastore-init"]),
        architecture_problems,
        "hive-metastore does not wait for hive-metastore-init",
    ),
    "worker-starts-with-the-master": (
        _set([SERVICES, "spark-worker-1", "depends_on", "spark-master", "condition"], "service_started"),
        architecture_problems,
        "with service_started",
    ),
    "mlflow-on-its-own-server": (
        _set(
            [SERVICES, "mlflow", "environment", "MLFLOW_BACKEND_STORE_URI"],
            "postgresql://mlflow:${MLFLOW_DB_PASSWORD:?x}@mlflow-db/mlflow",
        ),
        database_problems,
        "is not postgres:5432/mlflow",
    ),
    "metastore-on-derby": (
        _set([SERVICES, "hive-metastore", "environment", "METASTORE_JDBC_URL"], "jdbc:derby:;databaseName=metastore"),
        database_problems,
        "not PostgreSQL",
    ),
    "airflow-as-superuser": (
        _set(
            [SERVICES, "airflow-scheduler", "environment", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
            "postgresql+psycopg2://postgres:${POSTGRES_PASSWORD:?x}@postgres:5432/airflow",
        ),
        database_problems,
        "not as the airflow role",
    ),
    "password-the-role-was-not-created-with": (
        _set([SERVICES, "hive-metastore-init", "environment", "METASTORE_DB_PASSWORD"], "${HIVE_PASSWORD:?x}"),
        database_problems,
        "the metastore password",
    ),
    "database-password-with-a-default": (
        _set([SERVICES, "hive-metastore", "environment", "METASTORE_DB_PASSWORD"], "${METASTORE_DB_PASSWORD:-x}"),
        database_problems,
        "hive-metastore: the metastore password is not ${METASTORE_DB_PASSWORD:?...}",
    ),
    "init-script-password-with-a-default": (
        _set([SERVICES, "postgres", "environment", "MLFLOW_DB_PASSWORD"], "${MLFLOW_DB_PASSWORD:-mlflow}"),
        database_problems,
        "postgres does not pass MLFLOW_DB_PASSWORD",
    ),
    "init-script-not-mounted": (
        _set([SERVICES, "postgres", "volumes"], ["postgres-data:/var/lib/postgresql/data"]),
        database_problems,
        "does not run docker/postgres/init-databases.sh",
    ),
    "token-with-a-default": (
        _set([SERVICES, "ray-head", "environment", "RAY_AUTH_TOKEN"], "${MLOPS_RAY_AUTH_TOKEN:-x}"),
        ray_problems,
        "ray-head: the token is not a required ${VAR:?...}",
    ),
    "worker-without-auth": (
        _set([SERVICES, "ray-worker", "environment", "RAY_AUTH_MODE"], "disabled"),
        ray_problems,
        "ray-worker: RAY_AUTH_MODE",
    ),
    "scheduler-with-a-token": (
        _set([SERVICES, "airflow-scheduler", "environment", "RAY_AUTH_TOKEN"], "${OTHER_TOKEN:?x}"),
        ray_problems,
        "airflow-scheduler: a Ray token in its environment",
    ),
    "worker-joins-the-client-port": (
        _set([SERVICES, "ray-worker", "command", 3], "--address=ray-head:10001"),
        ray_problems,
        "does not join the head's GCS port",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_COPIES), ids=list(BROKEN_COPIES))
def test_the_cluster_checks_can_fail(compose: dict[str, Any], case: str) -> None:
    mutate, checker, expected = BROKEN_COPIES[case]
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = checker(broken)
    assert any(expected in problem for problem in problems), problems


def test_the_cluster_has_the_cluster_profiles_shape(compose: dict[str, Any]) -> None:
    """The ports, cores and pool of stack/config/addresses.py and stack/profiles.py: one architecture, two ways to
    run it."""
    from stack import config
    from stack.profiles import profile_named

    master, metastore, head = (
        command(compose, "spark-master"),
        command(compose, "hive-metastore"),
        command(compose, "ray-head"),
    )
    assert option(metastore, "-p") == str(config.METASTORE_PORT)
    assert option(master, "--port") == str(config.SPARK_MASTER_PORT)
    assert option(master, "--webui-port") == str(config.SPARK_MASTER_UI_PORT) != "8080"  # Airflow's port
    for worker, ui_port in zip(SPARK_WORKERS, config.SPARK_WORKER_UI_PORTS, strict=True):
        argv = command(compose, worker)
        assert option(argv, "--webui-port") == str(ui_port), worker
        assert option(argv, "--cores") == str(config.SPARK_WORKER_CORES), worker
        assert argv[-1] == f"spark://spark-master:{config.SPARK_MASTER_PORT}", worker
        assert option(argv, "--host") == worker, "the name other containers reach it by"
    cores_max = connection(compose, "AIRFLOW_CONN_SPARK_DEFAULT")["extra"]["cores-max"]
    assert int(cores_max) == config.SPARK_JOB_CORES_MAX <= config.SPARK_WORKER_CORES * len(SPARK_WORKERS)
    assert environment({"environment": compose["x-mlops-env"]})["MLOPS_SPARK_CORES_MAX"] == str(cores_max)
    assert option(head, "--port") == str(config.RAY_GCS_PORT)
    assert option(head, "--dashboard-port") == str(config.RAY_DASHBOARD_PORT)
    assert option(head, "--ray-client-server-port") == str(config.RAY_CLIENT_PORT)
    for node in RAY_NODES:
        assert option(command(compose, node), "--num-cpus") == "1", node
    pool = re.search(
        r"^\s*airflow pools set spark_metastore (\d+) ", compose[SERVICES]["airflow-init"]["command"][-1], re.M
    )
    assert pool is not None and int(pool.group(1)) == profile_named("cluster").metastore_writers > 1


def test_the_spark_connection_fits_the_image_and_the_network(compose: dict[str, Any]) -> None:
    """The driver (LocalExecutor: on the scheduler) finds the s3a jars where docker/Dockerfile puts them, the workers
    have the same jars on their own classpath, the metastore is the hive-metastore service's port, and no fixed
    driver address: Spark advertises its container's host name, which the scheduler's is, so that the executors on
    the workers reach it."""
    extra = connection(compose, "AIRFLOW_CONN_SPARK_DEFAULT")["extra"]
    s3a_jars = dockerfile_copies("jars").get("/jars/spark-s3a/")
    assert s3a_jars is not None, "docker/Dockerfile no longer copies the s3a jars"
    assert extra["extra-classpath"] == s3a_jars.rstrip("/") + "/*"
    assert extra["spark-binary"] == "spark-submit" and extra["deploy-mode"] == "client"
    assert "metastore-dir" not in extra and "local-ip" not in extra
    assert extra["metastore-uri"] == f"thrift://hive-metastore:{option(command(compose, 'hive-metastore'), '-p')}"
    for worker in SPARK_WORKERS:
        assert environment(compose[SERVICES][worker])["SPARK_DIST_CLASSPATH"] == extra["extra-classpath"], worker
    assert compose[SERVICES]["airflow-scheduler"]["hostname"] == "airflow-scheduler"


def test_the_jars_match_what_the_project_pins() -> None:
    """hadoop-aws at the pyspark wheel's Hadoop version (stack/config/versions.py HADOOP_AWS_VERSION), the PostgreSQL
    JDBC driver the notes name, both from the stack's Maven projects, which docker/Dockerfile builds."""
    import pyspark

    from stack.config import HADOOP_AWS_VERSION

    def pinned(pom: str, artifact: str) -> str:
        text = (REPO_ROOT / "stack" / "maven" / pom).read_text(encoding="utf-8")
        found = re.search(rf"<artifactId>{artifact}</artifactId>\s*<version>([^<]+)</version>", text)
        assert found is not None, f"{pom} does not pin {artifact}"
        return found.group(1)

    hadoop_client = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert [jar.name for jar in hadoop_client] == [f"hadoop-client-api-{HADOOP_AWS_VERSION}.jar"]
    assert pinned("spark-s3a-pom.xml", "hadoop-aws") == HADOOP_AWS_VERSION
    assert pinned("postgresql-pom.xml", "postgresql") == "42.7.14"
    # The OpenLineage listener's Kafka client is the broker's version.
    from stack.config import KAFKA_VERSION

    assert pinned("spark-lineage-pom.xml", "kafka-clients") == KAFKA_VERSION
    # Spark's Kafka source (the drift monitor) at the Spark that loads it.
    assert pinned("spark-kafka-pom.xml", "spark-sql-kafka-0-10_2.13") == pyspark.__version__
    copies = dockerfile_copies("jars")
    assert copies == {
        "/jars/spark-s3a/": "/opt/mlops/jars/spark-s3a/",
        "/jars/postgresql/": "/opt/mlops/jars/postgresql/",
        "/jars/spark-lineage/": "/opt/mlops/jars/spark-lineage/",
        "/jars/spark-kafka/": "/opt/mlops/jars/spark-kafka/",
    }


def test_cluster_nodes_carry_no_keys_and_no_project_code(compose: dict[str, Any]) -> None:
    """As in the cluster profile (stack/cluster/), the Spark and Ray nodes share nothing with the submitting host:
    jobs bring the S3 keys (Spark: the job's Hadoop configuration; Ray: the job's runtime_env) and the code (Spark:
    --py-files; Ray: py_modules)."""
    for name in CLUSTER_NODES:
        service = compose[SERVICES][name]
        env = environment(service)
        assert not [key for key in env if key.startswith("AWS_")], name
        assert env.get("PYTHONPATH") == "", f"{name}: the image's PYTHONPATH would put its copy of `ml` first"
        mounts = [str(volume) for volume in service.get("volumes", [])]
        assert not [mount for mount in mounts if mount.startswith(".")], f"{name} mounts project code: {mounts}"


# --- the Hive metastore's configuration (docker/hive_metastore_conf.py) ----------------------------------------------


def metastore_conf_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hive_metastore_conf", METASTORE_CONF_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_hive_site(path: Path) -> dict[str, str]:
    root = ElementTree.parse(path).getroot()
    return {prop.findtext("name", ""): prop.findtext("value", "") for prop in root.iter("property")}


def test_the_metastore_gets_its_database_and_s3_from_the_environment(compose: dict[str, Any], tmp_path: Path) -> None:
    """What the entry point writes from hive-metastore's environment: the JDO connection of the compose file, the
    warehouse the pipeline's Spark jobs use, s3a to the S3 service; files only the container's user reads."""
    from ml.preprocess.conf import spark_conf
    from ml.settings import LakeSettings, S3Settings, SparkSettings

    conf = metastore_conf_module()
    env = filled_environment(compose[SERVICES]["hive-metastore"])
    conf_dir = tmp_path / "conf"
    written = conf.write_conf(conf_dir, env)
    assert [path.name for path in written] == ["hive-site.xml", "schema.properties"]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in written)
    site = read_hive_site(conf_dir / "hive-site.xml")
    assert site["javax.jdo.option.ConnectionURL"] == env["METASTORE_JDBC_URL"]
    assert site["javax.jdo.option.ConnectionPassword"] == env["METASTORE_DB_PASSWORD"]
    assert site["datanucleus.schema.autoCreateAll"] == "false" and site["hive.async.log.enabled"] == "false"
    jobs = spark_conf(SparkSettings(), S3Settings(), LakeSettings(lake_bucket=env["MLOPS_LAKE_BUCKET"]))
    assert site["hive.metastore.warehouse.dir"] == jobs["spark.sql.warehouse.dir"]
    assert site["fs.s3a.endpoint"] == env["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert site["fs.s3a.path.style.access"] == "true" and site["fs.s3a.connection.ssl.enabled"] == "false"
    schema = dict(line.split("=", 1) for line in (conf_dir / "schema.properties").read_text().splitlines())
    assert schema["datanucleus.identifierFactory"] == "datanucleus1"
    assert schema["datanucleus.rdbms.useLegacyNativeValueStrategy"] == "true"
    assert schema["javax.jdo.option.ConnectionUserName"] == env["METASTORE_DB_USER"]
    # Without an S3 endpoint (the schema one-shot), no s3a settings; XML and properties stay well-formed.
    init_env = filled_environment(compose[SERVICES]["hive-metastore-init"])
    assert not [key for key in conf.hive_site(init_env) if key.startswith("fs.s3a.")]
    tricky = {**init_env, "METASTORE_DB_PASSWORD": "a<b>&c\\d"}
    conf.write_conf(tmp_path / "tricky", tricky)
    assert read_hive_site(tmp_path / "tricky" / "hive-site.xml")["javax.jdo.option.ConnectionPassword"] == "a<b>&c\\d"
    assert "=a<b>&c\\\\d\n" in (tmp_path / "tricky" / "schema.properties").read_text()
    with pytest.raises(ValueError, match="one line"):
        conf.render_properties({"key": "two\nlines"})


def test_the_metastore_commands_read_the_written_configuration(compose: dict[str, Any]) -> None:
    """The Thrift service finds hive-site.xml on its classpath, SchemaTool its properties, in HIVE_CONF_DIR."""
    for name in ("hive-metastore", "hive-metastore-init"):
        service = compose[SERVICES][name]
        assert service["entrypoint"] == ["/usr/bin/dumb-init", "--", "/opt/mlops/bin/hive-metastore-conf"], name
    conf_dir = environment(compose[SERVICES]["hive-metastore"])["HIVE_CONF_DIR"]
    assert (option(command(compose, "hive-metastore"), "-cp") or "").split(":")[0] == conf_dir
    init = command(compose, "hive-metastore-init")
    assert (
        option(init, "-props")
        == f"{environment(compose[SERVICES]['hive-metastore-init'])['HIVE_CONF_DIR']}/schema.properties"
    )
    assert init[-1] == "package.jdo" and option(init, "-api") == "JDO" and "-create" in init
