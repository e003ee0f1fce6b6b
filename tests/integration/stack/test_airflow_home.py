"""stack/airflow_home.py with the real `airflow` CLI: a fresh Airflow home is migrated, the stack's connections are
imported into its database, and what Airflow gives back (`airflow connections export`), read through the hooks in a
process with Airflow's environment (no endpoint variables: stack.services.AIRFLOW_UNSET), is the settings the stack
describes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ml.settings import Settings
from stack.config import REPO_ROOT, StackPaths

READ_BACK = """
import json
from mlops_airflow.hooks import KafkaEventsHook, MlflowHook, RayHook, s3_settings, spark_settings
s3, spark = s3_settings("aws_default"), spark_settings("spark_default")
print(json.dumps({
    "s3": [s3.endpoint_url, s3.region, s3.access_key_id, s3.secret_access_key],
    "spark": [spark.master, spark.extra_classpath, spark.metastore_dir, spark.local_ip],
    "kafka": KafkaEventsHook().settings.bootstrap_servers,
    "mlflow": MlflowHook().settings.tracking_uri,
    "ray": [RayHook().settings.address, RayHook().settings.state_signing_key],
}))
"""


def test_a_prepared_airflow_home_gives_the_hooks_the_stacks_settings(stack_env: dict[str, str], tmp_path: Path) -> None:
    from stack.airflow_home import SIMPLE_AUTH_FILE, prepare_airflow_home
    from stack.services import AIRFLOW_UNSET

    home = tmp_path / "airflow"
    env = {**stack_env, "AIRFLOW_HOME": str(home)}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)  # the throwaway home's own SQLite database
    prepare_airflow_home(StackPaths(tmp_path / "stack"), env)
    assert (home / "airflow.db").exists() and (home / SIMPLE_AUTH_FILE).exists()
    assert not list((tmp_path / "stack" / "run").glob("*.json")), "the connections file (with the S3 key) is gone"

    # What the database holds, as Airflow serves it to tasks (to stdout: the S3 key is written to no file).
    exported = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "airflow"), "connections", "export", "-", "--file-format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    stored = json.loads(exported.stdout[exported.stdout.index("{") :])
    assert set(stored) == {
        "aws_default",
        "aws_tune",
        "spark_default",
        "kafka_default",
        "kafka_s3_events",  # the asset watchers' (plugins/mlops_airflow/assets.py): uploads
        "kafka_drift_events",  # and drift
        "openlineage_default",  # the OpenLineage provider's transport ([openlineage] config_conn_id)
        "mlflow_default",
        "ray_default",
    }

    airflow_env = {key: value for key, value in env.items() if key not in AIRFLOW_UNSET}
    airflow_env.update({f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(doc) for conn_id, doc in stored.items()})
    result = subprocess.run(
        [sys.executable, "-c", READ_BACK], cwd=REPO_ROOT, env=airflow_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    read = json.loads(result.stdout.strip().splitlines()[-1])
    expected = Settings.from_env(env)
    assert read == {
        "s3": [
            expected.s3.endpoint_url,
            expected.s3.region,
            expected.s3.access_key_id,
            expected.s3.secret_access_key,
        ],
        "spark": [
            expected.spark.master,
            expected.spark.extra_classpath,
            expected.spark.metastore_dir,
            expected.spark.local_ip,
        ],
        "kafka": expected.kafka.bootstrap_servers,
        "mlflow": expected.mlflow.tracking_uri,
        "ray": [expected.ray.address, expected.ray.state_signing_key],
    }
    assert expected.ray.state_signing_key, "the tune task gets the stack's Tune state key from ray_default"
    assert expected.spark.extra_classpath, "the stack's s3a jars reach Spark jobs run by Airflow"
