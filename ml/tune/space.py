"""Search spaces given as data: validated, normalised, hashed, and turned into Ray Tune sampling domains.

Format: `{"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "hidden_size": {"type": "choice", "values":
[32, 64]}, "num_layers": {"type": "randint", "low": 1, "high": 4}, "activation": "relu", ...}`; a bare value is a
constant. Shipped spaces live in ml/search_spaces/NAME.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ml.models import ACTIVATIONS, NORMS
from ml.settings import S3Settings
from ml.storage import S3Uri
from ml.train import HPARAMS

SEARCH_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DEFAULT_SEARCH_SPACE = SEARCH_SPACES_DIR / "default.json"

_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "loguniform": ("low", "high"),
    "randint": ("low", "high"),  # high is exclusive, as in ray.tune.randint
    "qrandint": ("low", "high", "q"),  # high is inclusive, as in ray.tune.qrandint
    "lograndint": ("low", "high"),  # high is exclusive
    "choice": ("values",),
    "constant": ("value",),
}
_INT_DISTRIBUTIONS = ("randint", "qrandint", "lograndint")
_FLOAT_DISTRIBUTIONS = ("uniform", "quniform", "loguniform")

# Upper bounds on the sizes a search space may ask for: a trial's memory grows with them (hidden_size^2 x num_layers
# weights, batch_size rows at once), and a DAG param must not be able to take a worker down.
MAX_BATCH_SIZE = 65_536
MAX_NUM_LAYERS = 32
MAX_HIDDEN_SIZE = 8_192
# A search space file is a few hundred bytes; anything much larger is not one (and is not read whole).
MAX_SEARCH_SPACE_BYTES = 64 * 1024


def _in_range(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}]"


# What each hyper-parameter accepts: its kind and a check of one value (None when fine, else the reason).
_PARAM_RULES: dict[str, tuple[str, Callable[[Any], str | None]]] = {
    "lr": ("float", lambda v: None if v > 0 else "must be > 0"),
    "weight_decay": ("float", lambda v: None if v >= 0 else "must be >= 0"),
    "dropout": ("float", lambda v: None if 0 <= v <= 1 else "must be in [0, 1)"),
    "batch_size": ("int", _in_range(1, MAX_BATCH_SIZE)),
    "num_layers": ("int", _in_range(0, MAX_NUM_LAYERS)),
    "hidden_size": ("int", _in_range(1, MAX_HIDDEN_SIZE)),
    "norm": ("category", lambda v: None if v in NORMS else f"must be one of {list(NORMS)}"),
    "activation": ("category", lambda v: None if v in ACTIVATIONS else f"must be one of {list(ACTIVATIONS)}"),
}
assert set(_PARAM_RULES) == set(HPARAMS)


def validate_search_space(space: Any) -> dict[str, dict[str, Any]]:
    """Check a search space given as data and return it normalised (every entry a dict with a `type`).

    Format: `{"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}, "hidden_size": {"type": "choice",
    "values": [32, 64]}, "num_layers": {"type": "randint", "low": 1, "high": 4}, "activation": "relu", ...}`;
    a bare value is a constant. Raises ValueError naming the offending key.
    """
    if not isinstance(space, Mapping) or not space:
        # The type only, never the value: it may be the content of whatever file a param pointed at.
        raise ValueError(
            f"search space must be a non-empty mapping of hyper-parameter -> distribution, got {type(space).__name__}"
        )
    normalised: dict[str, dict[str, Any]] = {}
    for key, entry in space.items():
        if key not in _PARAM_RULES:
            raise ValueError(f"search space key {key!r} is not a hyper-parameter; expected one of {sorted(HPARAMS)}")
        if not isinstance(entry, Mapping):
            entry = {"type": "constant", "value": entry}
        normalised[key] = _validate_entry(key, dict(entry))
    return normalised


def _validate_entry(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    kind, check = _PARAM_RULES[key]
    dist = entry.get("type")
    if dist not in _DISTRIBUTIONS:
        raise ValueError(f"search space {key!r}: type {dist!r} is not one of {sorted(_DISTRIBUTIONS)}")
    required = _DISTRIBUTIONS[dist]
    missing = [f for f in required if f not in entry]
    extra = sorted(set(entry) - {"type", *required})
    if missing or extra:
        raise ValueError(
            f"search space {key!r}: {dist} needs exactly {list(required)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )

    def value_ok(value: Any, what: str) -> None:
        if kind == "category":
            ok_type = isinstance(value, str)
        elif kind == "int":
            ok_type = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok_type = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok_type:
            raise ValueError(f"search space {key!r}: {what} {value!r} is not a valid {kind} value")
        reason = check(value)
        if reason:
            raise ValueError(f"search space {key!r}: {what} {value!r} {reason}")

    if dist == "constant":
        value_ok(entry["value"], "value")
    elif dist == "choice":
        values = entry["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"search space {key!r}: choice needs a non-empty list of 'values', got {values!r}")
        for value in values:
            value_ok(value, "choice")
    else:
        if kind == "category":
            raise ValueError(
                f"search space {key!r}: a categorical hyper-parameter takes 'choice' or 'constant', not {dist}"
            )
        if kind == "int" and dist in _FLOAT_DISTRIBUTIONS:
            raise ValueError(
                f"search space {key!r}: an integer hyper-parameter needs one of {list(_INT_DISTRIBUTIONS)}"
                f", 'choice' or 'constant', not {dist}"
            )
        if kind == "float" and dist in _INT_DISTRIBUTIONS:
            raise ValueError(
                f"search space {key!r}: a real-valued hyper-parameter needs one of "
                f"{list(_FLOAT_DISTRIBUTIONS)}, 'choice' or 'constant', not {dist}"
            )
        low, high = entry["low"], entry["high"]
        value_ok(low, "low")
        value_ok(high, "high")
        if not low < high:
            raise ValueError(f"search space {key!r}: low ({low}) must be below high ({high})")
        if dist.startswith("log") and low <= 0:
            raise ValueError(f"search space {key!r}: {dist} needs low > 0, got {low}")
        if key == "dropout" and high > 1:
            raise ValueError(f"search space {key!r}: high {high} must be <= 1")
        if "q" in entry and not (isinstance(entry["q"], int | float) and entry["q"] > 0):
            raise ValueError(f"search space {key!r}: q must be a positive number, got {entry['q']!r}")
    return entry


def to_tune_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """A validated search space as Ray Tune sampling domains (constants stay plain values)."""
    from ray import tune

    domains: dict[str, Any] = {}
    for key, entry in validate_search_space(space).items():
        dist = entry["type"]
        if dist == "constant":
            domains[key] = entry["value"]
        elif dist == "choice":
            domains[key] = tune.choice(list(entry["values"]))
        else:
            factory = getattr(tune, dist)
            args = [entry["low"], entry["high"]] + ([entry["q"]] if "q" in entry else [])
            domains[key] = factory(*args)
    return domains


# S3 settings, or a function that returns them: called only when a search space has to be read from S3 (a DAG's
# param check then resolves no connection for the usual spaces).
S3Source = S3Settings | Callable[[], S3Settings] | None


def load_search_space(source: str | Path, s3: S3Source = None) -> dict[str, Any]:
    """Read a search space from a JSON or YAML file (a local path, or an s3:// URI read with `s3`) and validate it.
    Files over MAX_SEARCH_SPACE_BYTES are refused unread, and parse errors give a position, never the content."""
    text_source = str(source)
    if text_source.startswith(("s3://", "s3a://")):
        from ml.clients import s3_client

        if s3 is None:
            raise ValueError(f"search space {text_source}: reading from S3 needs S3 settings")
        uri = S3Uri.parse(text_source)
        client = s3_client(s3() if callable(s3) else s3)
        size = int(client.head_object(Bucket=uri.bucket, Key=uri.key)["ContentLength"])
        _check_size(text_source, size)
        raw = client.get_object(Bucket=uri.bucket, Key=uri.key, Range=f"bytes=0-{MAX_SEARCH_SPACE_BYTES}")
        body: bytes = raw["Body"].read()
    else:
        _check_size(text_source, Path(source).stat().st_size)
        body = Path(source).read_bytes()
    _check_size(text_source, len(body))  # (it may have grown since)
    data = _parse(body, text_source)
    try:
        validate_search_space(data)
    except ValueError as error:
        raise ValueError(f"{text_source}: {error}") from None
    return dict(data)


def _check_size(where: str, size: int) -> None:
    if size > MAX_SEARCH_SPACE_BYTES:
        raise ValueError(
            f"search space {where}: {size} bytes, over the {MAX_SEARCH_SPACE_BYTES} a search space may have"
        )


def _parse(body: bytes, where: str) -> Any:
    """JSON or YAML (by the file's suffix); an error says where in the file, not what is there."""
    try:
        text = body.decode()
        if where.endswith((".yaml", ".yml")):
            import yaml

            try:
                return yaml.safe_load(text)
            except yaml.MarkedYAMLError as error:
                mark = error.problem_mark
                at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown place"
                raise ValueError(f"search space {where}: not valid YAML ({error.problem or 'error'} at {at})") from None
            except yaml.YAMLError:
                raise ValueError(f"search space {where}: not valid YAML") from None
        return json.loads(text)
    except UnicodeDecodeError as error:
        raise ValueError(f"search space {where}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"search space {where}: not valid JSON ({error.msg} at line {error.lineno})") from None


def resolve_search_space(value: Any, s3: S3Source = None, *, allow_local_files: bool = True) -> dict[str, Any]:
    """A search space from what a DAG param or CLI gives: None (the default), a mapping, a JSON string, the name of a
    shipped space (`default`, `small`: ml/search_spaces/NAME.json), or a JSON/YAML file path or s3:// URI (read with
    `s3`). `allow_local_files=False` (Airflow's DAG params) refuses paths on the worker's disk: whoever triggers a run
    must not be able to make the worker read its files."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return default_search_space()
    if isinstance(value, Mapping):
        validate_search_space(value)
        return dict(value)
    if not isinstance(value, str | Path):
        raise ValueError(f"search space must be a mapping, a JSON string, a name or a file, got {type(value).__name__}")
    text = str(value).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"search space is not valid JSON: {error}") from None
        validate_search_space(data)
        return dict(data)
    shipped = SEARCH_SPACES_DIR / f"{text}.json"
    if re.fullmatch(r"[A-Za-z0-9_-]+", text) and shipped.is_file():
        return load_search_space(shipped)
    names = sorted(p.stem for p in SEARCH_SPACES_DIR.glob("*.json"))
    if not text.startswith(("s3://", "s3a://")) and not allow_local_files:
        raise ValueError(f"search space {text!r} is neither JSON, a shipped space {names}, nor an s3:// URI")
    if not text.startswith(("s3://", "s3a://")) and not Path(text).is_file():
        raise ValueError(f"search space {text!r} is neither JSON, a shipped space {names}, nor an existing file")
    return load_search_space(text, s3)


def default_search_space() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEFAULT_SEARCH_SPACE.read_text())
    return loaded


def search_space_hash(space: Mapping[str, Any]) -> str:
    """A stable fingerprint of a search space (sha256 of its normalised, key-sorted JSON; 16 hex digits)."""
    canonical = json.dumps(validate_search_space(space), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
