"""ml.tune.space: search spaces as data (validated, normalised, hashed), read from files, S3 (moto) or DAG params,
and turned into Ray Tune domains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ml.train import HPARAMS
from ml.tune.space import (
    DEFAULT_SEARCH_SPACE,
    SEARCH_SPACES_DIR,
    default_search_space,
    load_search_space,
    resolve_search_space,
    search_space_hash,
    to_tune_space,
    validate_search_space,
)
from tests.support.synthetic_features import IN_MEMORY_S3, in_memory_s3


@pytest.mark.parametrize("name", ["default.json", "small.json"])
def test_shipped_search_spaces_parse(name: str) -> None:
    space = load_search_space(SEARCH_SPACES_DIR / name)
    domains = to_tune_space(space)
    assert set(domains) == set(space) and set(space) <= set(HPARAMS)


def test_the_default_space_is_the_shipped_default() -> None:
    assert default_search_space() == json.loads(DEFAULT_SEARCH_SPACE.read_text())
    assert resolve_search_space(None) == default_search_space()


def test_search_space_to_tune_domains() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    domains = to_tune_space(
        {
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
            "hidden_size": {"type": "choice", "values": [32, 64, 128]},
            "num_layers": {"type": "randint", "low": 1, "high": 4},
            "batch_size": {"type": "qrandint", "low": 32, "high": 256, "q": 32},
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "quniform", "low": 0.0, "high": 0.1, "q": 0.01},
            "activation": "gelu",
            "norm": {"type": "constant", "value": "layer"},
        }
    )
    assert isinstance(domains["lr"], Float) and isinstance(domains["dropout"], Float)
    assert (domains["lr"].lower, domains["lr"].upper) == (1e-4, 1e-1)
    assert isinstance(domains["hidden_size"], Categorical) and domains["hidden_size"].categories == [32, 64, 128]
    assert isinstance(domains["num_layers"], Integer)
    assert (domains["num_layers"].lower, domains["num_layers"].upper) == (1, 4)
    assert isinstance(domains["batch_size"], Integer) and domains["batch_size"].sampler.q == 32
    assert isinstance(domains["weight_decay"], Float) and domains["weight_decay"].sampler.q == 0.01
    assert domains["activation"] == "gelu" and domains["norm"] == "layer"


def test_bare_values_are_normalised_to_constants() -> None:
    assert validate_search_space({"lr": 0.01, "norm": "batch"}) == {
        "lr": {"type": "constant", "value": 0.01},
        "norm": {"type": "constant", "value": "batch"},
    }


@pytest.mark.parametrize(
    "space,key,fragment",
    [
        ({"learning_rate": {"type": "uniform", "low": 0, "high": 1}}, "learning_rate", "not a hyper-parameter"),
        ({"lr": {"type": "normal", "low": 0.1, "high": 1}}, "lr", "type 'normal'"),
        ({"lr": {"type": "loguniform", "low": 0.1}}, "lr", "missing \\['high'\\]"),
        ({"lr": {"type": "loguniform", "low": 0.1, "high": 1, "base": 2}}, "lr", "unexpected \\['base'\\]"),
        ({"lr": {"type": "loguniform", "low": 0.0, "high": 1}}, "lr", "must be > 0"),
        ({"lr": {"type": "randint", "low": 1, "high": 4}}, "lr", "real-valued hyper-parameter"),
        ({"lr": {"type": "uniform", "low": 0.1, "high": float("inf")}}, "lr", "not a valid float"),
        ({"weight_decay": {"type": "uniform", "low": -0.1, "high": 0.1}}, "weight_decay", "must be >= 0"),
        ({"weight_decay": {"type": "quniform", "low": 0, "high": 1, "q": 0}}, "weight_decay", "q must be a positive"),
        ({"dropout": {"type": "uniform", "low": 0.5, "high": 0.1}}, "dropout", "must be below high"),
        ({"dropout": {"type": "uniform", "low": 0.0, "high": 1.5}}, "dropout", "1.5"),
        ({"hidden_size": {"type": "choice", "values": []}}, "hidden_size", "non-empty list"),
        ({"hidden_size": {"type": "choice", "values": 32}}, "hidden_size", "non-empty list"),
        ({"hidden_size": {"type": "uniform", "low": 8, "high": 64}}, "hidden_size", "integer hyper-parameter"),
        ({"hidden_size": {"type": "choice", "values": [32, "64"]}}, "hidden_size", "'64'"),
        ({"hidden_size": {"type": "lograndint", "low": 0, "high": 64}}, "hidden_size", r"must be in \[1, 8192\]"),
        ({"hidden_size": {"type": "choice", "values": [64, 10**9]}}, "hidden_size", r"must be in \[1, 8192\]"),
        ({"batch_size": {"type": "randint", "low": 1, "high": 2**40}}, "batch_size", r"must be in \[1, 65536\]"),
        ({"num_layers": 1000}, "num_layers", r"must be in \[0, 32\]"),
        ({"batch_size": {"type": "choice", "values": [True, 64]}}, "batch_size", "True"),
        ({"norm": {"type": "choice", "values": ["batch", "group"]}}, "norm", "'group'"),
        ({"activation": {"type": "uniform", "low": 0, "high": 1}}, "activation", "categorical"),
        ({"activation": 3}, "activation", "not a valid category"),
        ({"num_layers": {"type": "randint", "low": 1.5, "high": 4}}, "num_layers", "1.5"),
        ({"num_layers": -1}, "num_layers", r"must be in \[0, 32\]"),
        ({"lr": "fast"}, "lr", "'fast'"),
    ],
)
def test_bad_search_space_entries_name_the_key(space: dict, key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        validate_search_space(space)
    assert repr(key) in str(caught.value)


def test_a_log_distribution_needs_a_positive_low() -> None:
    # num_layers accepts 0 as a value: the log rule is what refuses it here.
    with pytest.raises(ValueError, match="lograndint needs low > 0"):
        validate_search_space({"num_layers": {"type": "lograndint", "low": 0, "high": 4}})


def test_search_space_must_be_a_mapping() -> None:
    for bad in ([], {}, "lr", None):
        with pytest.raises(ValueError, match="non-empty mapping"):
            validate_search_space(bad)


def test_search_space_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("lr:\n  type: loguniform\n  low: 0.001\n  high: 0.1\nnum_layers: 2\n")
    (tmp_path / "space.json").write_text(
        json.dumps({"num_layers": 2, "lr": {"type": "loguniform", "low": 0.001, "high": 0.1}})
    )
    from_yaml = load_search_space(tmp_path / "space.yaml")
    assert from_yaml == {"lr": {"type": "loguniform", "low": 0.001, "high": 0.1}, "num_layers": 2}
    # Key order and bare constants do not change the fingerprint; a different range does.
    assert search_space_hash(from_yaml) == search_space_hash(load_search_space(tmp_path / "space.json"))
    assert search_space_hash(from_yaml) == search_space_hash(
        {**from_yaml, "num_layers": {"type": "constant", "value": 2}}
    )
    assert search_space_hash(from_yaml) != search_space_hash({**from_yaml, "num_layers": 3})
    assert len(search_space_hash(from_yaml)) == 16
    (tmp_path / "bad.yaml").write_text("lr:\n  type: loguniform\n  low: -1\n  high: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: search space 'lr'"):
        load_search_space(tmp_path / "bad.yaml")


def test_a_file_that_is_not_a_search_space_is_never_echoed(tmp_path: Path) -> None:
    """Errors reach task logs and Kafka events: they say where a file is wrong, never what it holds."""
    private_line = "root:x:0:0:s3cret-value:/root:/bin/bash"  # what a /etc/passwd might hold
    for name, body in {
        "passwd.json": f"{private_line}\n",
        "passwd.yaml": f"{private_line}\nsecond: [unclosed\n",
        "plain.yaml": f"{private_line}\n",  # YAML reads this as one string
        "bytes.json": b"\xff\xfe" + private_line.encode(),
    }.items():
        path = tmp_path / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        with pytest.raises(ValueError) as caught:
            load_search_space(path)
        assert "s3cret" not in str(caught.value) and str(path) in str(caught.value), str(caught.value)


def test_a_search_space_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"lr": 0.01, "padding": "x" * 70_000}))
    with pytest.raises(ValueError, match=r"big\.json: \d+ bytes, over the 65536"):
        load_search_space(big)
    with in_memory_s3("lake") as client:
        client.put_object(Bucket="lake", Key="spaces/big.json", Body=big.read_bytes())
        with pytest.raises(ValueError, match=r"s3://lake/spaces/big\.json: \d+ bytes, over the 65536"):
            load_search_space("s3://lake/spaces/big.json", IN_MEMORY_S3)


def test_airflow_params_cannot_point_at_the_workers_files(tmp_path: Path) -> None:
    local = tmp_path / "space.json"
    local.write_text(json.dumps({"lr": 0.01}))
    assert resolve_search_space(str(local)) == {"lr": 0.01}  # the CLI may
    for value in (str(local), "/etc/passwd", "../ml/search_spaces/small.json"):
        with pytest.raises(ValueError, match="nor an s3:// URI"):
            resolve_search_space(value, allow_local_files=False)
    assert resolve_search_space("small", allow_local_files=False) == load_search_space(SEARCH_SPACES_DIR / "small.json")


def test_search_space_from_s3() -> None:
    with in_memory_s3("lake") as client:
        client.put_object(Bucket="lake", Key="spaces/s.json", Body=b'{"lr": 0.01}')
        client.put_object(Bucket="lake", Key="spaces/s.yml", Body=b"dropout: 0.2\n")
        assert load_search_space("s3://lake/spaces/s.json", IN_MEMORY_S3) == {"lr": 0.01}
        assert resolve_search_space("s3a://lake/spaces/s.yml", IN_MEMORY_S3) == {"dropout": 0.2}
    with pytest.raises(ValueError, match="reading from S3 needs S3 settings"):
        load_search_space("s3://lake/spaces/s.json")


def test_s3_settings_are_asked_for_only_when_a_space_is_read_from_s3() -> None:
    """A DAG's param check passes a function that resolves the AWS connection: the usual spaces never call it."""
    asked: list[str] = []

    def settings() -> Any:
        asked.append("s3")
        return IN_MEMORY_S3

    assert resolve_search_space("small", settings) == load_search_space(SEARCH_SPACES_DIR / "small.json")
    assert resolve_search_space({"lr": 0.01}, settings) == {"lr": 0.01}
    assert asked == []
    with in_memory_s3("lake") as client:
        client.put_object(Bucket="lake", Key="spaces/s.json", Body=b'{"lr": 0.02}')
        assert resolve_search_space("s3://lake/spaces/s.json", settings) == {"lr": 0.02}
    assert asked == ["s3"]


def test_search_space_from_any_param_form(tmp_path: Path) -> None:
    default = default_search_space()
    assert resolve_search_space(None) == resolve_search_space("null") == resolve_search_space("default") == default
    assert resolve_search_space(" None ") == resolve_search_space("") == default
    assert resolve_search_space({"lr": 0.01}) == {"lr": 0.01}
    assert resolve_search_space('{"num_layers": {"type": "randint", "low": 1, "high": 3}}') == {
        "num_layers": {"type": "randint", "low": 1, "high": 3}
    }
    assert resolve_search_space("small") == load_search_space(SEARCH_SPACES_DIR / "small.json")
    (tmp_path / "s.yaml").write_text("dropout: 0.1\n")
    assert resolve_search_space(str(tmp_path / "s.yaml")) == {"dropout": 0.1}
    assert resolve_search_space(tmp_path / "s.yaml") == {"dropout": 0.1}
    with pytest.raises(ValueError, match=r"neither JSON, a shipped space \['default', 'small'"):
        resolve_search_space("no-such-space")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_search_space("{lr: 1}")
    with pytest.raises(ValueError, match="search space 'lr'"):
        resolve_search_space({"lr": -1.0})
    with pytest.raises(ValueError, match="got int"):
        resolve_search_space(3)
