"""ml.preprocess.submit: the application, its arguments and environment, and run_preprocess driving a stand-in
spark-submit (a script that reports what it was given), so no JVM starts here."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from ml.preprocess import submit
from ml.preprocess.conf import spark_conf
from ml.preprocess.job import RESULT_MARKER
from ml.preprocess.submit import APPLICATION, PROJECT_ROOT, application_args, application_env, run_preprocess
from ml.settings import LakeSettings, S3Settings, SparkSettings

LAKE = LakeSettings(lake_bucket="my-lake")


def keyed_s3() -> S3Settings:
    return S3Settings(
        endpoint_url="http://127.0.0.1:9000", access_key_id=uuid.uuid4().hex, secret_access_key=uuid.uuid4().hex
    )


def test_the_application_is_the_job_module() -> None:
    assert APPLICATION.name == "job.py" and APPLICATION.parent.name == "preprocess" and APPLICATION.is_file()
    assert (PROJECT_ROOT / "ml" / "__init__.py").is_file()


def test_application_args() -> None:
    assert application_args("d", "snap", LAKE) == ["--dataset", "d", "--snapshot", "snap", "--lake-bucket", "my-lake"]
    assert application_args("d", "snap", LAKE, seed=7, max_categories=5, force=True) == [
        "--dataset",
        "d",
        "--snapshot",
        "snap",
        "--lake-bucket",
        "my-lake",
        "--seed",
        "7",
        "--max-categories",
        "5",
        "--force",
    ]
    # seed 0 is a seed, not "the default"
    assert application_args("d", "snap", LAKE, seed=0)[-2:] == ["--seed", "0"]


def test_the_job_parses_what_submit_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The argument names agree: ml.preprocess.job.main accepts every argument application_args writes."""
    from ml.preprocess import job

    parsed: dict[str, Any] = {}

    def stop(self: Any, argv: list[str]) -> Any:
        parsed.update(vars(original(self, argv)))
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        job.main(application_args("d", "snap", LAKE, seed=7, max_categories=5, force=True))
    assert parsed == {
        "dataset": "d",
        "snapshot": "snap",
        "lake_bucket": "my-lake",
        "seed": 7,
        "max_categories": 5,
        "min_category_count": 1,
        "force": True,
    }


def test_application_env_makes_ml_importable_and_carries_the_keys() -> None:
    s3 = keyed_s3()
    env = application_env(SparkSettings(local_ip="127.0.0.1"), s3)
    assert env["PYTHONPATH"] == str(PROJECT_ROOT)
    assert env["AWS_ACCESS_KEY_ID"] == s3.access_key_id and env["AWS_SECRET_ACCESS_KEY"] == s3.secret_access_key
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_importing_submit_loads_neither_spark_nor_pandas() -> None:
    """Airflow's operator imports it for the application's path at parse time."""
    code = "import sys, ml.preprocess.submit; print([m for m in ('pyspark', 'pandas', 'pyarrow') if m in sys.modules])"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == "[]"


def test_spark_submit_is_the_one_beside_python_or_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="spark-submit is not on PATH"):
        submit.spark_submit_binary()
    beside = tmp_path / "spark-submit"
    beside.write_text("#!/bin/sh\n")
    assert submit.spark_submit_binary() == str(beside)


# run_preprocess with a stand-in spark-submit

STAND_IN = """\
#!{python}
import json, os, sys
mode = {mode!r}
print("INFO SparkContext: a line of Spark's log")
if mode == "ok":
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PYTHONPATH", "SPARK_LOCAL_IP")
    env = {{key: os.environ.get(key) for key in keys}}
    py_files = sys.argv[sys.argv.index("--py-files") + 1]
    sys.path.insert(0, py_files)  # what Spark does on the driver and each executor
    import ml.preprocess.steps
    shipped = {{"py_files": py_files, "steps": ml.preprocess.steps.__file__}}
    print({marker!r} + json.dumps({{"argv": sys.argv[1:], "env": env, "shipped": shipped}}))
elif mode == "bad input":
    print("error: snapshot s of 'd' has no training rows", flush=True)
    sys.exit(2)
"""


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    def install(mode: str) -> None:
        script = tmp_path / f"spark-submit-{mode.replace(' ', '-')}"
        script.write_text(textwrap.dedent(STAND_IN.format(python=sys.executable, mode=mode, marker=RESULT_MARKER)))
        script.chmod(0o755)
        monkeypatch.setattr(submit, "spark_submit_binary", lambda: str(script))

    return install


def test_run_preprocess_submits_the_job_and_returns_its_result(
    stand_in: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    stand_in("ok")
    # This process's own AWS variables (another service's) never reach the job.
    monkeypatch.setenv("AWS_SESSION_TOKEN", uuid.uuid4().hex)
    s3, spark = keyed_s3(), SparkSettings(master="local[3]", local_ip="127.0.0.1")
    result = run_preprocess("d", "snap", s3=s3, lake=LAKE, spark=spark, driver_memory="1g", seed=3)
    argv = result["argv"]
    assert argv[:6] == ["--master", "local[3]", "--driver-memory", "1g", "--name", "preprocess-d"]
    confs = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "--conf")
    assert confs == spark_conf(spark, s3, LAKE)
    application = argv.index(str(APPLICATION))
    assert argv[application + 1 :] == application_args("d", "snap", LAKE, seed=3)
    # the ml package reaches the executors as --py-files, a zip that lives as long as the job
    assert argv[application - 2] == "--py-files" and argv[application - 1] == result["shipped"]["py_files"]
    assert result["shipped"]["steps"].startswith(result["shipped"]["py_files"] + "/ml/preprocess/")
    assert not Path(result["shipped"]["py_files"]).exists()
    assert result["env"] == {
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        "AWS_SESSION_TOKEN": None,
        "PYTHONPATH": str(PROJECT_ROOT),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    # keys travel in the environment only, never on the command line
    assert not any(s3.secret_access_key in arg or s3.access_key_id in arg for arg in argv)
    # the log passes through to stderr
    assert "a line of Spark's log" in capfd.readouterr().err


def test_a_job_that_refuses_its_input_fails_with_the_reason(stand_in: Any) -> None:
    stand_in("bad input")
    with pytest.raises(
        RuntimeError,
        match=r"Spark preprocessing of d snapshot s failed \(spark-submit exit code 2\): snapshot s of 'd' has no "
        r"training rows",
    ):
        run_preprocess("d", "s", s3=keyed_s3(), lake=LAKE, spark=SparkSettings())


def test_a_job_without_a_result_line_fails(stand_in: Any) -> None:
    stand_in("silent")
    with pytest.raises(RuntimeError, match=r"exit code 0\); see the Spark log above"):
        run_preprocess("d", "s", s3=keyed_s3(), lake=LAKE, spark=SparkSettings())


def test_the_ml_zip_is_the_whole_package_without_bytecode(tmp_path: Path) -> None:
    """What an executor imports: `ml.preprocess.steps` from the zip alone (an isolated interpreter, away from this
    checkout), with the package's data files and no __pycache__."""
    import zipfile

    from ml.preprocess.submit import write_ml_zip

    package = write_ml_zip(tmp_path)
    names = zipfile.ZipFile(package).namelist()
    assert "ml/preprocess/steps.py" in names and "ml/__init__.py" in names
    assert any(name.startswith("ml/schemas/") for name in names), "data files travel with the code"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    code = f"import sys; sys.path.insert(0, {str(package)!r}); import ml.preprocess.steps as s; print(s.__file__)"
    completed = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    assert completed.stdout.strip() == f"{package}/ml/preprocess/steps.py"
    again = tmp_path / "again"
    again.mkdir()
    assert write_ml_zip(again).name == package.name, "named after its content: the same code, the same name"


def test_the_ml_zip_is_removed_after_the_job() -> None:
    from ml.preprocess.submit import ml_package_zip

    with ml_package_zip() as package:
        assert package.is_file() and package.suffix == ".zip"
        assert package.parent.stat().st_mode & 0o077 == 0, "a private folder: nobody else can swap the code"
    assert not package.exists() and not package.parent.exists()
