"""Moved names resolve lazily at their old address; anything else is still an AttributeError."""

from __future__ import annotations

import sys

import pytest

from ml.moved import moved_names


def test_a_moved_name_resolves_to_its_module_today() -> None:
    lookup = moved_names("old.place", {"dumps": "json", "sqrt": "math"})
    import json
    import math

    assert lookup("dumps") is json.dumps and lookup("sqrt") is math.sqrt


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    with pytest.raises(AttributeError, match=r"module 'old\.place' has no attribute 'nope'"):
        moved_names("old.place", {"dumps": "json"})("nope")


def test_nothing_is_imported_until_a_name_is_asked_for() -> None:
    sys.modules.pop("colorsys", None)
    lookup = moved_names("old.place", {"rgb_to_hsv": "colorsys"})
    assert "colorsys" not in sys.modules
    assert callable(lookup("rgb_to_hsv")) and "colorsys" in sys.modules
