"""The rules each layer keeps (docs/ARCHITECTURE.md), checked on the source: what may import what, where the
environment may be read, and how large a module may grow."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ML = REPO / "ml"

# The entry points: the only modules of `ml` that read the process environment (os.environ / os.getenv), to build
# settings (Settings.from_env) or to compose a subprocess's environment; and ml/process_env.py, the one module that
# writes it, for Ray (its auth mode and token around ray.init, the AWS keys Tune would copy) and MLflow (its login),
# which read those settings nowhere else (tests/unit/ml/tune/test_runtime.py checks Ray's are put back).
ENVIRONMENT_READERS = {
    "ml/settings.py",
    "ml/__main__.py",
    "ml/serve/__init__.py",
    "ml/serve/cli.py",
    "ml/serve/gunicorn_conf.py",  # gunicorn's configuration, run in its master: PROMETHEUS_MULTIPROC_DIR
    "ml/preprocess/application.py",  # the entry of spark-submit's applications (preprocessing, batch scoring)
    "ml/preprocess/submit.py",
    "ml/process_env.py",  # Ray's token around ray.init, MLflow's login: the libraries read them nowhere else
}
# Where clients are built: nothing else constructs a boto3 client, an MlflowClient or a Kafka client.
CLIENT_CONSTRUCTORS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "MlflowClient", "S3FileSystem"}
CLIENT_MODULES = {"ml/clients.py", "ml/keyless_s3.py"}
MAX_MODULE_LINES = 400


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_ml_imports_neither_airflow_nor_the_glue_nor_the_stack() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(n for n in _imports(path) if n.split(".")[0] in forbidden)
        for path in _modules(ML)
        for forbidden in [{"airflow", "mlops_airflow", "stack", "dags", "tests", "bench"}]
        if any(n.split(".")[0] in forbidden for n in _imports(path))
    }
    assert offenders == {}


def test_dag_files_import_ml_only_inside_tasks() -> None:
    """DAG files wire tasks: `ml` is imported inside task functions, never at module level (parse time)."""
    offenders = []
    for path in _modules(REPO / "dags"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (module or "").split(".")[0] == "ml":
                    offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_only_entry_points_read_the_environment() -> None:
    readers = set()
    for path in _modules(ML):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
                if node.attr in ("environ", "getenv", "putenv", "unsetenv"):
                    readers.add(str(path.relative_to(REPO)))
    assert readers <= ENVIRONMENT_READERS, (
        f"reads the environment outside an entry point: {readers - ENVIRONMENT_READERS}"
    )


def test_the_checker_sees_an_environment_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nvalue = os.environ.get('X')\n")
    found = [
        node.attr
        for node in ast.walk(ast.parse(sample.read_text()))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
    ]
    assert found == ["environ"]


def test_clients_are_built_in_ml_clients_only() -> None:
    offenders = []
    for path in _modules(ML):
        relative = str(path.relative_to(REPO))
        if relative in CLIENT_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in CLIENT_CONSTRUCTORS or (name == "client" and "boto3" in ast.unparse(node.func)):
                    offenders.append(f"{relative}:{node.lineno} {name}")
    assert offenders == []


def test_no_module_of_ml_outgrows_one_job() -> None:
    """A module past ~400 lines is mixing jobs: split it into a package (docs/ARCHITECTURE.md)."""
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _modules(ML)}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}
