"""The one check of client JSON (``sessionvisor._json``): its edges, without recursion."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sessionvisor._json import MAX_DEPTH, JSONInputError, JSONTypeError, check_json, json_problem


def _lists(levels: int, inner: Any) -> Any:
    value = inner
    for _ in range(levels):
        value = [value]
    return value


def _dicts(levels: int, inner: Any) -> Any:
    value = inner
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize("wrap", [_lists, _dicts], ids=["lists", "objects"])
@pytest.mark.parametrize("inner", [0, "s", [], {}], ids=["int", "str", "empty-list", "empty-obj"])
def test_64_levels_pass_and_65_do_not_whatever_is_at_the_bottom(wrap: Any, inner: Any) -> None:
    containers = 0 if not isinstance(inner, list | dict) else 1
    assert json_problem(wrap(MAX_DEPTH - containers, inner)) is None
    problem = json_problem(wrap(MAX_DEPTH - containers + 1, inner))
    assert problem is not None and "nested more than 64 levels" in problem[1]


def test_a_value_a_hundred_thousand_levels_deep_is_refused_without_recursion() -> None:
    with pytest.raises(JSONInputError, match=r"content.* is nested more than 64 levels deep"):
        check_json(_lists(100_000, 1), "content")


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"a": [1, {"b": math.inf}]}, JSONInputError, r"opts\['a'\]\[1\]\['b'\] is inf"),
        ({"a": -math.nan}, JSONInputError, r"opts\['a'\] is nan"),
        (["ok", "x\udfffy"], JSONInputError, r"opts\[1\] is a string with a lone surrogate"),
        ({"\ud800": 1}, JSONInputError, "has a key with a lone surrogate"),
        ([10**1000], JSONInputError, r"opts\[0\] is an integer of more than 1000 digits"),
        ({"k": {3: 1}}, JSONTypeError, r"opts\['k'\] has a key of type int"),
        ({"k": b"raw"}, JSONTypeError, r"opts\['k'\] is of type bytes"),
        (object(), JSONTypeError, "opts is of type object"),
    ],
)
def test_each_problem_is_named_with_its_path(value: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_json(value, "opts")


def test_what_json_can_hold_passes() -> None:
    value = {
        "s": "déjà vu 🎉",
        "n": [0, -1, 10**999, 1.5, -0.0, True, False, None],
        "t": ("tuples", "count", "as", "lists"),
        "e": [[], {}],
    }
    assert json_problem(value) is None
