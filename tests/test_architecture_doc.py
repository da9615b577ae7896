"""docs/architecture.md names every module of the package, and no module that is gone.

The page names a module by its path below ``src/sessionvisor/`` in backticks
(``sessions/_actor.py``, ``_errors.py``, ``__main__.py``). A module added,
renamed or removed fails here until the page follows it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sessionvisor"
DOC = ROOT / "docs" / "architecture.md"

# A backticked span that is a path ending in ``.py`` (no spaces, no other text).
_MODULE_PATH = re.compile(r"`([\w./-]+\.py)`")


def package_modules() -> set[str]:
    """Every module file of the package but the ``__init__.py`` files, relative to it."""
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }


def documented_modules() -> set[str]:
    """Every backticked module path on the page."""
    return set(_MODULE_PATH.findall(DOC.read_text(encoding="utf-8")))


def test_the_package_has_modules() -> None:
    # Guards the two tests below against a wrong path making them vacuous.
    assert "sessions/_supervisor.py" in package_modules()
    assert "__main__.py" in package_modules()


def test_every_module_is_on_the_page() -> None:
    missing = sorted(package_modules() - documented_modules())
    assert not missing, (
        f"{DOC.relative_to(ROOT)} does not name these modules (add each, in backticks, "
        f"as a path relative to src/sessionvisor, with its job): {', '.join(missing)}"
    )


def test_every_module_on_the_page_exists() -> None:
    unknown = sorted(path for path in documented_modules() if not (PACKAGE / path).is_file())
    assert not unknown, (
        f"{DOC.relative_to(ROOT)} names modules that do not exist under src/sessionvisor "
        f"(paths are relative to src/sessionvisor): {', '.join(unknown)}"
    )
