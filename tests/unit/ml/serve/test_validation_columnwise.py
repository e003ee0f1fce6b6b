"""validate_rows' column-by-column check (`_valid_columnwise`, for requests of 8 rows or more) against its row-by-row
loop, the oracle: on every body, good or bad, both give the same answer, the same rows or the same status and message
word for word. The columnwise check only ever says "all good"; whatever it does not vouch for goes through the loop,
so what these tests guard is that it never vouches for a body the loop refuses."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

from ml.features import CategoricalFeature, FeatureSpec, NumericFeature
from ml.serve import validation
from ml.serve.validation import FLOAT32_MAX, RequestError, validate_rows
from tests.support.stand_in_model import make_spec

SPEC = make_spec()  # numeric x1, x2; categorical color
TINY_STD = FeatureSpec(  # a number float32 holds can overflow it once standardised
    dataset="d",
    snapshot_id="s",
    task="regression",
    target="t",
    numeric=[NumericFeature("x", fill=0.0, mean=0.5, std=1e-3), NumericFeature("y", 0.0, 0.0, 0.0)],
    categorical=[CategoricalFeature("c", ["a"])],
)


def answer(body: Any, spec: FeatureSpec) -> Any:
    """What validate_rows gives: the rows it returns (by identity), the refusal's status and message, or what else
    it raised (the loop's messages cannot show a numpy scalar that is no Python number: json.dumps raises)."""
    try:
        rows = validate_rows(body, spec, max_rows=1000)
    except RequestError as error:
        return ("refused", error.status, error.message)
    except Exception as error:
        return ("raised", type(error).__name__, str(error))
    assert rows is body["rows"]
    return "accepted"


def loop_answer(body: Any, spec: FeatureSpec, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patched:
        patched.setattr(validation, "_COLUMNWISE_FROM", 10**9)  # the loop only, as before the columnwise check
        return answer(body, spec)


def good_rows(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = [lambda: rng.gauss(0, 5), lambda: rng.randrange(-50, 50), lambda: None, lambda: 0.0, lambda: -1e30]
    return [
        {
            "x1": rng.choice(kinds)(),
            "x2": rng.choice(kinds)(),
            "color": rng.choice(["red", "green", "blue", "", None, 3, 2.5, "  Red "]),
        }
        for _ in range(count)
    ]


# (row, column or None for the whole row, the value or a marker): one change to a good body each.
DELETE, NOT_A_DICT = object(), object()
CHANGES = [
    (3, "x1", True),
    (3, "x2", False),
    (0, "x1", "1.5"),
    (9, "x2", "abc"),
    (5, "x1", [1.0]),
    (5, "x1", {"v": 1}),
    (2, "color", True),
    (2, "color", [1]),
    (2, "color", {"a": "b"}),
    (4, "x1", 10**400),  # beyond float64: the loop's float() overflows
    (4, "x1", 10**39),  # beyond float32
    (4, "x1", -(10**39)),
    (4, "x2", 2**53 + 1),
    (4, "x2", 2**63 + 1),
    (4, "x2", 2**64 + 1),
    (4, "x2", -(2**63)),
    (6, "x1", float("nan")),  # imputed (parse_body refuses it in a request; validate_rows alone passes it)
    (6, "x1", float("inf")),
    (6, "x1", np.float64(2.0)),  # a float subclass: the loop takes it
    (6, "x1", np.float32(2.0)),
    (6, "x1", np.int64(2)),
    (6, "color", np.str_("red")),
    (7, "x1", DELETE),
    (7, "color", DELETE),
    (7, "colour", "red"),  # a misspelt extra field
    (8, None, NOT_A_DICT),
    (8, None, ["x1", "x2", "color"]),
]


@pytest.mark.parametrize(("row", "column", "value"), CHANGES)
def test_one_change_answers_as_the_loop(
    row: int, column: str | None, value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(20, seed=row)
    if column is None:
        rows[row] = 1 if value is NOT_A_DICT else value
    elif value is DELETE:
        del rows[row][column]
    else:
        rows[row][column] = value
    body = {"rows": rows}
    assert answer(copy.deepcopy(body), SPEC) == loop_answer(body, SPEC, monkeypatch)


def test_many_bad_rows_answer_as_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several changes at once: the loop's first errors only, in its order, whichever path looked first."""
    rng = random.Random(0)
    for trial in range(60):
        rows = good_rows(rng.choice([8, 9, 30, 200]), seed=trial)
        for _ in range(rng.choice([1, 2, 5, 15])):
            row, column, value = rng.choice(CHANGES)
            row = rng.randrange(len(rows))
            if column is None:
                rows[row] = 1 if value is NOT_A_DICT else value
            elif not isinstance(rows[row], dict):
                continue
            elif value is DELETE:
                rows[row].pop(column, None)
            else:
                rows[row][column] = value
        body = {"rows": rows}
        assert answer(body, SPEC) == loop_answer(body, SPEC, monkeypatch), trial


@pytest.mark.parametrize("count", [8, 50, 1000])
def test_good_rows_are_accepted_by_the_columnwise_check_itself(count: int) -> None:
    rows = good_rows(count, seed=count)
    assert validation._valid_columnwise(rows, SPEC, {"x1", "x2", "color"})
    assert validate_rows({"rows": rows}, SPEC, max_rows=1000) is rows


def test_standardised_overflow_at_the_float32_boundary_answers_as_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values whose standardised value lies at float32's largest finite value, one float64 step either side."""
    edge = FLOAT32_MAX * 1e-3 + 0.5  # (edge - 0.5) / 1e-3: FLOAT32_MAX give or take rounding
    values = [np.nextafter(edge, -np.inf).item(), edge]
    for _ in range(3):
        values.append(np.nextafter(values[-1], np.inf).item())
    values += [-edge, 3e35, 3e36]
    answers = set()
    for value in values:
        body = {"rows": [{"x": 1.0, "y": 0.0, "c": "a"} for _ in range(9)] + [{"x": value, "y": 2, "c": None}]}
        found = loop_answer(body, TINY_STD, monkeypatch)
        answers.add(found if found == "accepted" else found[0])
        assert answer(body, TINY_STD) == loop_answer(body, TINY_STD, monkeypatch), value
    assert answers == {"accepted", "refused"}  # the values straddle the boundary
    y_only = {"rows": [{"x": None, "y": FLOAT32_MAX * 2, "c": "a"}] * 10}  # std 0: divided by 1
    assert answer(y_only, TINY_STD) == loop_answer(y_only, TINY_STD, monkeypatch)
