"""ml.registry.rescore: both versions scored on the challenger's test split, with stand-in models and a local split (no
MLflow, no S3): the raw rows recovered for the champion, its labels expressed in the challenger's classes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.features import CategoricalFeature, FeatureSpec, NumericFeature
from ml.models import load_model
from ml.predictor import LoadedModel, TabularPredictor
from ml.registry import rescore
from ml.registry.context import RegistryError
from ml.registry.rescore import features_to_raw_rows, rescore_on_test_split
from tests.support.stand_in_model import make_checkpoint, make_spec, raw_rows, score, split_parquet
from tests.unit.ml.registry.fakes import fake_context

FEATURES = "s3://lake/features/snap-b"


def test_features_to_raw_rows_inverts_the_transform() -> None:
    spec = FeatureSpec(
        dataset="d",
        snapshot_id="s",
        task="regression",
        target="y",
        numeric=[NumericFeature("a", fill=1.0, mean=1.0, std=2.0), NumericFeature("b", fill=0.0, mean=0.0, std=0.0)],
        categorical=[CategoricalFeature("c", ["x", "y"]), CategoricalFeature("d", ["p"])],
    )
    rows = [{"a": 3.0, "b": -1.5, "c": "y", "d": "p"}, {"a": -1.0, "b": 0.25, "c": "x", "d": "unseen"}]
    recovered = features_to_raw_rows(spec, spec.transform(rows))
    assert recovered[0] == {"a": pytest.approx(3.0), "b": pytest.approx(-1.5), "c": "y", "d": "p"}
    assert recovered[1] == {"a": pytest.approx(-1.0), "b": pytest.approx(0.25), "c": "x", "d": None}  # __other__
    assert np.allclose(spec.transform(recovered), spec.transform(rows))


def test_missing_values_come_back_as_the_imputed_value() -> None:
    spec = make_spec()
    recovered = features_to_raw_rows(spec, spec.transform([{"x1": None, "x2": None, "color": None}]))
    assert recovered == [{"x1": pytest.approx(0.0), "x2": pytest.approx(0.5), "color": None}]


def loaded(tmp_path: Path, version: str, spec: FeatureSpec, quality: str, **tags: str) -> LoadedModel:
    checkpoint = make_checkpoint(tmp_path / f"v{version}", spec, quality)
    return LoadedModel("m", version, TabularPredictor(load_model(checkpoint), spec), dict(tags))


@pytest.fixture
def split_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Writes the challenger's test split under a local folder that stands for S3 (bucket/key paths)."""
    import pyarrow.fs as pafs

    root = tmp_path / "s3"

    def write(spec: FeatureSpec, rows: list[dict[str, Any]]) -> None:
        part = root / "lake" / "features" / "snap-b" / "test" / "part-00000.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(split_parquet(spec, rows))

    root.mkdir()
    monkeypatch.setattr(
        "ml.clients.arrow_filesystem", lambda s3: pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
    )
    return write


def use_versions(monkeypatch: pytest.MonkeyPatch, *versions: LoadedModel) -> list[tuple[str, str]]:
    loads: list[tuple[str, str]] = []
    by_version = {v.version: v for v in versions}

    def load_version(mlflow: Any, name: str, version: str) -> LoadedModel:
        loads.append((name, version))
        return by_version[version]

    monkeypatch.setattr(rescore, "load_version", load_version)
    return loads


def test_the_champion_is_scored_on_the_challengers_rows(
    tmp_path: Path, split_on_disk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The new snapshot standardises x1 differently: the champion sees raw values recovered from the new split.
    champion_spec = make_spec(snapshot_id="snap-a")
    challenger_spec = make_spec(snapshot_id="snap-b", x1_mean=0.7)
    rows = raw_rows(200, seed=1)
    split_on_disk(challenger_spec, rows)
    loads = use_versions(
        monkeypatch,
        loaded(tmp_path, "2", challenger_spec, "good", features_uri=FEATURES),
        loaded(tmp_path, "1", champion_spec, "medium"),
    )
    challenger_value, champion_value = rescore_on_test_split(fake_context(), "m", "2", "1", "test_accuracy")
    assert loads == [("m", "2"), ("m", "1")]
    assert challenger_value == 1.0
    # The medium model scored on the same rows offline (x2 imputes alike in both specs; color plays no part).
    expected = score(champion_spec, tmp_path / "v1", rows)["accuracy"]
    assert champion_value == pytest.approx(expected, abs=1 / 200) and 0.6 < champion_value < 0.95


def test_the_champions_labels_are_mapped_to_the_challengers_classes(
    tmp_path: Path, split_on_disk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenger_spec = make_spec(snapshot_id="snap-b")
    split_on_disk(challenger_spec, raw_rows(100, seed=2))
    # The same "good" weights, but the champion's class order is reversed: in labels it is always wrong.
    reversed_spec = replace(make_spec(snapshot_id="snap-a"), classes=["yes", "no"])
    use_versions(
        monkeypatch,
        loaded(tmp_path, "2", challenger_spec, "good", features_uri=FEATURES),
        loaded(tmp_path, "1", reversed_spec, "good"),
    )
    assert rescore_on_test_split(fake_context(), "m", "2", "1", "accuracy") == (1.0, 0.0)
    _, log_loss = rescore_on_test_split(fake_context(), "m", "2", "1", "log_loss")
    assert log_loss > 1.0  # its probabilities were reordered too: confident and wrong


def test_a_class_the_challenger_lacks_is_never_right(
    tmp_path: Path, split_on_disk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenger_spec = make_spec(snapshot_id="snap-b")
    split_on_disk(challenger_spec, raw_rows(100, seed=3))
    other_spec = replace(make_spec(snapshot_id="snap-a"), classes=["no", "maybe"])  # predicts "maybe" for x1 > 0
    use_versions(
        monkeypatch,
        loaded(tmp_path, "2", challenger_spec, "good", features_uri=FEATURES),
        loaded(tmp_path, "1", other_spec, "good"),
    )
    _, champion_accuracy = rescore_on_test_split(fake_context(), "m", "2", "1", "accuracy")
    truth = np.array([row["x1"] > 0 for row in raw_rows(100, seed=3)])
    assert champion_accuracy == pytest.approx(float((~truth).mean()))  # right only where the truth is "no"


def test_regression_versions_are_rescored_on_their_values(
    tmp_path: Path, split_on_disk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenger_spec = make_spec("regression", snapshot_id="snap-b", x1_mean=-0.3)
    rows = raw_rows(100, seed=4)
    split_on_disk(challenger_spec, rows)
    champion_spec = make_spec("regression", snapshot_id="snap-a")
    use_versions(
        monkeypatch,
        loaded(tmp_path, "2", challenger_spec, "good", features_uri=FEATURES),
        loaded(tmp_path, "1", champion_spec, "bad"),
    )
    challenger_rmse, champion_rmse = rescore_on_test_split(fake_context(), "m", "2", "1", "rmse")
    assert challenger_rmse < 1e-5 and champion_rmse == pytest.approx(
        score(champion_spec, tmp_path / "v1", rows)["rmse"]
    )


def test_a_challenger_without_features_or_an_unknown_metric_is_an_error(
    tmp_path: Path, split_on_disk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(snapshot_id="snap-b")
    split_on_disk(spec, raw_rows(10))
    use_versions(monkeypatch, loaded(tmp_path, "2", spec, "good"), loaded(tmp_path, "1", spec, "good"))
    with pytest.raises(RegistryError, match="v2 has no features_uri tag"):
        rescore_on_test_split(fake_context(), "m", "2", "1", "accuracy")
    use_versions(
        monkeypatch, loaded(tmp_path, "2", spec, "good", features_uri=FEATURES), loaded(tmp_path, "1", spec, "good")
    )
    with pytest.raises(RegistryError, match="metric 'rmse' is not computed for classification"):
        rescore_on_test_split(fake_context(), "m", "2", "1", "rmse")
