"""What the wheel carries: every file the packages read at run time that is not Python (console
templates and assets, migrations' template, the demo data) is declared package data. A file
left out would only break an installed wheel (scripts/ci_wheel.sh serves one in CI)."""

from __future__ import annotations

import fnmatch
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("recsys", "strategies", "features", "migrations")


def _package_data() -> dict[str, list[str]]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]


def _declared(path: str, package_data: dict[str, list[str]]) -> bool:
    """Whether ``path`` (relative to the root) matches a package-data pattern of a package
    above it."""
    for package, patterns in package_data.items():
        folder = package.replace(".", "/") + "/"
        if path.startswith(folder):
            inner = path[len(folder) :]
            if any(fnmatch.fnmatch(inner, p) for p in patterns):
                return True
    return False


def test_every_data_file_of_the_packages_is_package_data():
    package_data = _package_data()
    files = []
    for top in PACKAGES:
        for dirpath, dirnames, names in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, ROOT).replace(os.sep, "/")
            files += [f"{rel}/{n}" for n in names if not n.endswith((".py", ".pyc"))]
    assert "recsys/data/online_retail.csv.gz" in files and len(files) >= 10
    missing = sorted(f for f in files if not _declared(f, package_data))
    assert not missing, f"not in [tool.setuptools.package-data], so not in the wheel: {missing}"


def test_the_check_sees_an_undeclared_file():
    package_data = {"recsys.web.console": ["static/*.js"]}
    assert _declared("recsys/web/console/static/console.js", package_data)
    assert not _declared("recsys/web/console/static/console.css", package_data)
    assert not _declared("recsys/other/static/console.js", package_data)
