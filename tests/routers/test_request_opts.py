"""``check_request_opts``: request options must be recordable JSON."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from sessionvisor.routers import check_request_opts


def test_none_is_empty() -> None:
    assert check_request_opts(None) == {}


def test_result_is_the_json_round_trip_and_a_new_dict() -> None:
    opts = {"persona": "analyst", "tags": ("a", "b"), "nested": {"n": 1.5}}

    checked = check_request_opts(opts)

    assert checked == {"persona": "analyst", "tags": ["a", "b"], "nested": {"n": 1.5}}
    checked["nested"]["n"] = 0
    assert opts["nested"] == {"n": 1.5}


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (["persona", "analyst"], "request_opts of conversation 'c-1' must be a mapping"),
        ({1: "x"}, "request_opts of conversation 'c-1' must have str keys"),
        ({"when": datetime.date(2024, 1, 1)}, r"\['when'\] .* is of type date, not a JSON"),
        ({"s": {1, 2}}, r"\['s'\] of conversation 'c-1' is of type set, not a JSON"),
        ({"a": {2: "x"}}, r"request_opts\['a'\] .* has a key of type int"),
    ],
)
def test_unrecordable_opts_are_a_type_error_naming_request_opts(opts: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        check_request_opts(opts, conversation_id="c-1")


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"ratio": float("nan")}, r"\['ratio'\] of conversation 'c-1' is nan; only finite"),
        ({"big": 1e308 * 10}, r"\['big'\] of conversation 'c-1' is inf"),
        ({"n": 10**1001}, r"is an integer of more than 1000 digits"),
        ({"\ud800": 1}, "has a key with a lone surrogate"),
        ({"s": "a\udfffb"}, r"\['s'\] of conversation 'c-1' is a string with a lone surrogate"),
        ({"deep": _nested(64)}, "is nested more than 64 levels deep"),
        ({"deep": _nested(500)}, "is nested more than 64 levels deep"),
    ],
)
def test_opts_no_store_can_keep_are_a_value_error_naming_where(opts: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_request_opts(opts, conversation_id="c-1")


def test_opts_nested_64_levels_deep_are_recorded() -> None:
    # The mapping itself is the first level.
    assert check_request_opts({"deep": _nested(63)}) == {"deep": _nested(63)}
