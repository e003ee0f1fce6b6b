"""ml.serve.validation's parser: msgspec first, Python's json where msgspec refuses. Every body gives what Python's
json gives (the same values of the same types, or the same error), on generated bodies and on the edge cases where
the two parsers differ; and parse_body's refusals keep their messages."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ml.serve import validation
from ml.serve.validation import RequestError, parse_body


def typed(value: Any) -> Any:
    """A value with its exact types spelled out (1 == 1.0 == True in Python; not in a request)."""
    if isinstance(value, dict):
        return ("dict", [(key, typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [typed(item) for item in value])
    if isinstance(value, validation._NonFinite):
        return ("non-finite", value.literal)
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    return (type(value).__name__, value)


def reference(raw: bytes) -> Any:
    """What Python's json alone makes of `raw`: its value, or its exception's type."""
    try:
        return typed(json.loads(raw, parse_constant=validation._NonFinite))
    except Exception as error:
        return ("error", type(error).__name__)


def ours(raw: bytes) -> Any:
    try:
        return typed(validation._parse(raw))
    except Exception as error:
        return ("error", type(error).__name__)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["float", "int", "big", "str", "null", "bool", "list", "dict"] if depth < 4 else ["float", "str"])
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-320, 308), -0.0, 0.1, 5e-324])
    if kind == "int":
        return rng.randint(-(2**63), 2**63)
    if kind == "big":
        return rng.randint(2**64, 10**60)
    if kind == "str":
        return "".join(rng.choice('aé\u00ff\u4e2d\U0001f600"\\/\n\t\x00 ') for _ in range(rng.randint(0, 8)))
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{rng.randint(0, 5)}": random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_generated_bodies_parse_as_pythons_json_parses_them() -> None:
    rng = random.Random(20261203)
    for _ in range(2000):
        value = {"rows": [random_value(rng) for _ in range(rng.randint(0, 5))]}
        raw = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1])).encode()
        assert ours(raw) == reference(raw), raw[:200]


EDGE_CASES = [
    b'{"a": 1, "a": 2}',  # duplicate keys: the last one wins
    b"123456789012345678901234567890",
    b"1" * 4301,  # beyond Python's digit limit for int()
    b"1e999",
    b'{"a": -1.7976931348623157e309}',
    b"NaN",
    b'{"rows": [{"x": Infinity}]}',
    b"-Infinity",
    b'"\\ud800"',  # a lone surrogate
    b'"\\ud83d\\ude00"',
    b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
    '{"a": "é"}'.encode("utf-16"),
    b"\xff\xfe\x00",
    b"[" * 3000 + b"]" * 3000,
    b"[" * 40 + b"]" * 40,
    b" {} ",
    b"{} x",
    b"{",
    b"",
    b"-0",
    b"1E2",
    b"01",
    b'{"a":"\\u0000"}',
    b"[1,]",
    b"tru",
]


@pytest.mark.parametrize("raw", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_where_the_parsers_differ_pythons_json_decides(raw: bytes) -> None:
    assert ours(raw) == reference(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"NaN", "invalid numbers"),
        (b'{"rows": [{"x": 1e999}]}', "invalid numbers"),
        (b"1" * 4301, "too many digits"),
        (b"[" * 3000 + b"]" * 3000, "nested deeper than"),
        (b'{"rows": [1,]}', "request body is not valid JSON: Expecting value: line 1 column 13"),
        (b"\xff\xfe\x00", "not UTF-8 JSON"),
    ],
)
def test_parse_body_refusals_keep_their_messages(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_body(raw)
