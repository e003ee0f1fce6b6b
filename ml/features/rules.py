"""The rules the Spark job mirrors with built-in expressions: what counts as a number in a numeric column, how a
categorical value is keyed, and the names shared with the Parquet splits."""

from __future__ import annotations

import re
from typing import Any

OTHER = "__other__"
LABEL_COLUMN = "label"
SPLITS = ("train", "validation", "test")  # the folders of a features URI, each Parquet with feature columns + label
SPEC_VERSION = 1

# A plain decimal number (after trimming whitespace): what counts as a number in a numeric column, in the ingest check
# and in the Spark job alike (Spark's own cast also takes "3D", "1f" or hex, which would silently turn into numbers).
# Whitespace is spelled out as ASCII: `\s` means Unicode spaces to Python, ASCII without \v to pyarrow's RE2 and ASCII
# with \v to Java, so " 5" with a no-break space was a number when served but missing in Spark.
_SPACE = r"[ \t\n\r\f\x0B]*"
NUMBER_PATTERN = rf"^{_SPACE}[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?{_SPACE}$"
# Spellings of non-finite numbers: a numeric column's missing values, not bad values.
NON_FINITE_WORDS = frozenset(f"{sign}{word}" for sign in ("", "+", "-") for word in ("inf", "infinity", "nan"))
# An integral decimal written with a fraction ("3.0", "3."): the same category as "3".
INTEGRAL_DECIMAL_PATTERN = r"^([+-]?[0-9]+)\.0*$"
# Strings that mean "no value" (pyarrow's CSV defaults, which the ingest check used): missing in a categorical column,
# never a category (in the Spark job and the drift monitor alike).
NULL_TOKENS = (
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
)
# Boolean spellings (those pyarrow reads as booleans): one category each, as Spark writes a boolean as a string.
BOOLEAN_SPELLINGS = {"True": "true", "TRUE": "true", "False": "false", "FALSE": "false"}


def normalise_category(value: Any) -> str:
    """How a categorical value is keyed, in Spark and in Python alike: its string form with spaces trimmed (Spark's
    `trim` removes spaces only), booleans (and `True`, `FALSE`...) as `true`/`false`, and an integral decimal such as
    `3.0` as `3`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    text = str(value).strip(" ")
    return BOOLEAN_SPELLINGS.get(text) or re.sub(INTEGRAL_DECIMAL_PATTERN, r"\1", text)


_NUMBER = re.compile(NUMBER_PATTERN)


def parse_number(text: str) -> float | None:
    """A plain decimal number, or a spelling of inf/nan (a missing value); None for anything else. The rule the
    ingest check and the Spark job apply too (Python's float() also takes "1_000" and other digits)."""
    if not (_NUMBER.match(text) or text.strip().lower() in NON_FINITE_WORDS):
        return None
    return float(text)


def to_float(value: Any, column: str, row_index: int) -> float | None:
    """A numeric column's value as a float (None: missing), or ValueError naming the row and column."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise ValueError(f"row {row_index}, column {column!r}: expected a number, got a boolean")
    parsed = parse_number(value) if isinstance(value, str) else value
    try:
        if parsed is None:
            raise ValueError(value)
        return float(parsed)
    except (TypeError, ValueError):
        raise ValueError(f"row {row_index}, column {column!r}: expected a number, got {value!r}") from None
