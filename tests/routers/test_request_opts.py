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
        (["persona", "analyst"], "must be a mapping of JSON values, got list"),
        ({1: "x"}, "must have str keys"),
        ({"when": datetime.date(2024, 1, 1)}, "must be JSON-serializable"),
        ({"ratio": float("nan")}, "must be JSON-serializable"),
        ({"s": {1, 2}}, "must be JSON-serializable"),
    ],
)
def test_unrecordable_opts_are_a_type_error_naming_request_opts(opts: Any, match: str) -> None:
    with pytest.raises(TypeError, match=rf"request_opts of conversation 'c-1' {match}"):
        check_request_opts(opts, conversation_id="c-1")
