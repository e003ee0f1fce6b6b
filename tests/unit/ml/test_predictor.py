"""ml.predictor: a stand-in model loaded from files predicts exactly like the offline path (FeatureSpec.transform +
ml.models.predict), a checkpoint is copied from S3 without escaping its folder, and versions are resolved and loaded
from a registry (an in-memory one here; the real MLflow in tests/integration/ml/registry)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.models import load_model, predict
from ml.predictor import (
    LoadedModel,
    TabularPredictor,
    UngatedVersion,
    alias_version,
    answer_fields,
    download_checkpoint,
    load_version,
    output_frame,
    resolve_version,
    ungated_reason,
)
from ml.settings import MlflowSettings
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows
from tests.unit.ml.registry.fakes import FakeMlflow, FakeS3


def files(tmp_path: Path, task: str = "classification", quality: str = "medium") -> tuple[Path, Path]:
    spec = make_spec(task)
    checkpoint = make_checkpoint(tmp_path / f"checkpoint-{task}-{quality}", spec, quality)
    spec_path = tmp_path / f"spec-{task}.json"
    spec_path.write_text(spec.to_json())
    return checkpoint, spec_path


# --- TabularPredictor ------------------------------------------------------------------------------------------------


def test_classification_predictions_equal_the_offline_path(tmp_path: Path) -> None:
    checkpoint, spec_path = files(tmp_path)
    predictor = TabularPredictor.from_files(checkpoint, spec_path)
    rows = raw_rows(25, seed=3)
    labels, probabilities = predictor.predict_rows(rows)
    spec = make_spec()
    outputs, expected = predict(load_model(checkpoint), spec.transform(rows))
    assert labels == spec.decode_labels(outputs) and set(labels) <= {"no", "yes"}
    assert probabilities is not None and np.allclose(probabilities, expected)
    assert predictor.classes == ["no", "yes"]
    indices, matrix_probabilities = predictor.predict_matrix(spec.transform(rows))
    assert list(indices) == list(outputs) and np.allclose(matrix_probabilities, expected)  # type: ignore[arg-type]


def test_regression_predicts_plain_floats_without_classes(tmp_path: Path) -> None:
    checkpoint, spec_path = files(tmp_path, "regression", "good")
    predictor = TabularPredictor.from_files(checkpoint, spec_path)
    rows = [{"x1": 1.0, "x2": 0.0, "color": "red"}, {"x1": -2.0, "x2": None, "color": None}]
    values, probabilities = predictor.predict_rows(rows)
    assert probabilities is None and predictor.classes is None
    assert all(type(value) is float for value in values)
    assert values == pytest.approx([3.0, -3.0], abs=1e-5)  # the "good" stand-in follows 2 * x1 + 1


def test_a_value_the_spec_cannot_transform_is_a_value_error(tmp_path: Path) -> None:
    predictor = TabularPredictor.from_files(*files(tmp_path))
    with pytest.raises(ValueError, match="x1"):
        predictor.predict_rows([{"x1": "high", "x2": 1.0, "color": "red"}])


def test_example_rows_are_plausible_inputs(tmp_path: Path) -> None:
    predictor = TabularPredictor.from_files(*files(tmp_path))
    rows = predictor.example_rows(3)
    assert [sorted(row) for row in rows] == [["color", "x1", "x2"]] * 3
    assert rows[0] == {"x1": 0.0, "x2": 0.5, "color": "red"}  # training means, the most frequent category
    assert rows[1] == {"x1": 1.0, "x2": 2.5, "color": "green"} and rows[2]["color"] == "red"
    labels, _ = predictor.predict_rows(rows)
    assert len(labels) == 3


def test_output_frame_has_a_probability_column_per_class() -> None:
    frame = output_frame(["no", "yes"], np.array([[0.9, 0.1], [0.2, 0.8]]), ["no", "yes"])
    assert list(frame.columns) == ["prediction", "probability_no", "probability_yes"]
    assert list(frame["prediction"]) == ["no", "yes"] and frame["probability_yes"].tolist() == [0.1, 0.8]
    regression = output_frame([1.5, 2.5], None, None)
    assert list(regression.columns) == ["prediction"] and regression["prediction"].tolist() == [1.5, 2.5]


# --- download_checkpoint ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_answer_fields_write_the_probabilities_as_float_of_each_did(dtype: type) -> None:
    """tolist() in C, where a loop called float() per value: the same Python floats, so the same JSON bytes."""
    import json

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([0.1, 1.0, 5.0], size=500).astype(dtype)
    probabilities[:3] = [[1e-300 if dtype is np.float64 else 1e-40, 0.5, 0.5], [0.0, 1.0, -0.0], [1 / 3, 1 / 3, 1 / 3]]
    outputs = ["a"] * len(probabilities)
    fields = answer_fields(outputs, probabilities, ["a", "b", "c"])
    by_value = [[float(p) for p in row] for row in probabilities]  # what the loop gave
    assert json.dumps(fields["probabilities"]) == json.dumps(by_value)
    assert all(type(p) is float for row in fields["probabilities"] for p in row)


def test_download_checkpoint_copies_every_object_of_the_prefix(tmp_path: Path) -> None:
    checkpoint, _ = files(tmp_path)
    s3 = FakeS3()
    for path in checkpoint.iterdir():
        s3.put_file("lake", f"tune/run/checkpoint_000003/{path.name}", path)
    s3.put_object(Bucket="lake", Key="tune/run/checkpoint_000003/", Body=b"")  # a folder marker
    s3.put_object(Bucket="lake", Key="tune/run/checkpoint_000003/extra/notes.txt", Body=b"n")
    s3.put_object(Bucket="lake", Key="tune/run/checkpoint_0000030/other.pt", Body=b"x")  # a sibling with a longer name
    target = download_checkpoint("s3://lake/tune/run/checkpoint_000003/", tmp_path / "copy", s3)
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == ["extra/notes.txt", "model_config.json", "model_state.pt"]
    assert (target / "model_state.pt").read_bytes() == (checkpoint / "model_state.pt").read_bytes()
    load_model(target)


def test_an_empty_checkpoint_prefix_is_a_lookup_error(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="checkpoint not found"):
        download_checkpoint("s3://lake/nothing/here", tmp_path / "copy", FakeS3())


def test_a_key_that_escapes_the_checkpoint_folder_is_refused(tmp_path: Path) -> None:
    s3 = FakeS3()
    s3.put_object(Bucket="lake", Key="ckpt/../../escape.txt", Body=b"x")
    with pytest.raises(ValueError, match="escapes the checkpoint folder"):
        download_checkpoint("s3://lake/ckpt", tmp_path / "copy", s3)
    assert not (tmp_path / "escape.txt").exists()


# --- registry versions -----------------------------------------------------------------------------------------------


def test_loaded_model_exposes_metrics_and_lineage(tmp_path: Path) -> None:
    predictor = TabularPredictor.from_files(*files(tmp_path))
    tags = {"test.accuracy": "0.82", "test.loss": "0.4", "snapshot_id": "s", "dag_run_id": "r", "gate.x": "y"}
    model = LoadedModel("m", "7", predictor, tags)
    assert model.test_metrics == {"accuracy": 0.82, "loss": 0.4}
    assert model.lineage == {"snapshot_id": "s", "dag_run_id": "r"}
    assert model.spec is predictor.spec and model.aliases == []
    assert model.loaded_at.endswith("Z")


def test_resolve_version_by_number_or_alias() -> None:
    mlflow = FakeMlflow()
    mlflow.add("m", 3, snapshot_id="s")
    mlflow.aliases[("m", "champion")] = "3"
    assert resolve_version(mlflow, "m", "3").version == "3"
    assert resolve_version(mlflow, "m", "champion").version == "3"
    with pytest.raises(LookupError, match="registered model 'm' has no version or alias 'challenger'"):
        resolve_version(mlflow, "m", "challenger")
    with pytest.raises(LookupError, match="'4'"):
        resolve_version(mlflow, "m", "4")
    assert alias_version(mlflow, "m", "champion") == "3"
    assert alias_version(mlflow, "m", "challenger") is None
    assert alias_version(mlflow, "other", "champion") is None


def test_load_version_reads_the_versions_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The artifact layout of a registered version: artifacts/checkpoint/ and artifacts/feature_spec.json."""
    checkpoint, spec_path = files(tmp_path, quality="good")
    mlflow = FakeMlflow()
    mlflow.add("m", 5, **{"test.accuracy": "1.0"})
    mlflow.aliases[("m", "champion")] = "5"
    downloads: list[dict[str, Any]] = []

    def download_artifacts(**kwargs: Any) -> str:
        downloads.append(kwargs)
        local = Path(kwargs["dst_path"]) / "model"
        shutil.copytree(checkpoint, local / "artifacts" / "checkpoint")
        shutil.copyfile(spec_path, local / "artifacts" / "feature_spec.json")
        return str(local)

    monkeypatch.setattr("mlflow.artifacts.download_artifacts", download_artifacts)
    monkeypatch.setattr("ml.clients.mlflow_client", lambda settings: mlflow)
    settings = MlflowSettings("http://mlflow.example:5000")
    model = load_version(settings, "m", "champion")
    assert (model.name, model.version, model.aliases, model.test_metrics) == ("m", "5", ["champion"], {"accuracy": 1.0})
    [download] = downloads
    assert download["artifact_uri"] == "models:/m/5"
    assert download["tracking_uri"] == download["registry_uri"] == "http://mlflow.example:5000"
    assert not Path(download["dst_path"]).exists()  # the download folder is temporary
    labels, _ = model.predictor.predict_rows([{"x1": 1.0, "x2": 0.0, "color": "red"}])
    assert labels == ["yes"]


@pytest.mark.parametrize(
    ("tags", "served"),
    [
        ({"gate.decision": "first_model"}, True),
        ({"gate.decision": "promoted"}, True),
        ({"gate.decision": "already_champion"}, True),
        ({"rollback.at": "2026-12-02T00:00:00Z"}, True),  # an operator's explicit rollback
        ({"gate.decision": "rejected", "gate.reason": "worse than v3"}, False),
        ({}, False),  # the alias moved by hand, past the gate
    ],
)
def test_serving_refuses_a_version_the_gate_did_not_pass_before_downloading_it(
    monkeypatch: pytest.MonkeyPatch, tags: dict[str, str], served: bool
) -> None:
    mlflow = FakeMlflow()
    mlflow.add("m", 7, **tags)
    mlflow.aliases[("m", "champion")] = "7"
    downloads: list[Any] = []
    monkeypatch.setattr("mlflow.artifacts.download_artifacts", lambda **kwargs: downloads.append(kwargs) or "/nope")
    monkeypatch.setattr("ml.clients.mlflow_client", lambda settings: mlflow)
    settings = MlflowSettings("http://mlflow.example:5000")
    if served:
        assert ungated_reason(tags) is None
        return
    with pytest.raises(UngatedVersion, match=r"m v7 \(champion\): not served: .*(rejected|never went through)"):
        load_version(settings, "m", "champion", require_gated=True)
    assert downloads == []
