"""The http package and the command line export what they document, with docstrings."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import sessionvisor.http as http

PUBLIC_MODULES = ["sessionvisor.http", "sessionvisor.__main__"]


def test_the_http_package_exports_create_app_and_the_scope_functions() -> None:
    assert {"create_app", "header_scope", "header_or_query_scope", "close_event_streams"} <= set(
        http.__all__
    )
    assert http.__doc__ and "create_app" in http.__doc__


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_exists_and_functions_say_what_they_do(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    for attribute in module.__all__:
        value = getattr(module, attribute)
        if inspect.isfunction(value):
            doc = inspect.getdoc(value) or ""
            assert doc, f"{name}.{attribute} has no docstring"


def test_every_module_of_the_package_has_all() -> None:
    for info in pkgutil.iter_modules(http.__path__, "sessionvisor.http."):
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), info.name


def test_the_page_is_package_data() -> None:
    from importlib import resources

    page = resources.files("sessionvisor.http").joinpath("static", "index.html")
    assert "<!doctype html>" in page.read_text(encoding="utf-8")
