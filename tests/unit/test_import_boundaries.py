"""Dependencies point one way: the layout's import rules, checked on the source.

- Exactly one module of the product imports ably-python: the agent's Ably adapter.
- Nothing in `emulators/` imports the app (or the tooling around it): the stand-ins speak the
  services' protocols and know nothing of their client.
- Nothing in `soak/` or `bench/` imports `tests/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("conversations", "chatsite")
ADAPTER = Path("conversations/agent/ably_adapter.py")


def _imported_modules(source: str) -> list[str]:
    """Every absolute module an import statement names, anywhere in the file."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def _imports(source: str, package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in _imported_modules(source))


def _importers(directories: tuple[str, ...], packages: tuple[str, ...]) -> list[Path]:
    return sorted(
        path.relative_to(REPO_ROOT)
        for directory in directories
        for path in (REPO_ROOT / directory).rglob("*.py")
        if any(_imports(path.read_text(), package) for package in packages)
    )


def test_the_scan_recognises_every_import_form() -> None:
    assert _imports("import ably", "ably")
    assert _imports("import os, ably.types.message as m", "ably")
    assert _imports("from ably.types.message import Message", "ably")
    assert _imports("def f():\n    from ably import AblyRest\n", "ably")
    assert not _imports("from . import ably_adapter\nimport ablyish\nfrom .ably import x", "ably")


def test_only_the_adapter_imports_ably() -> None:
    assert _importers(PRODUCT_PACKAGES, ("ably",)) == [ADAPTER]


def test_the_stand_ins_import_nothing_of_the_app() -> None:
    assert _importers(("emulators",), (*PRODUCT_PACKAGES, "tests", "soak", "bench")) == []


def test_soak_and_bench_do_not_reach_into_the_tests() -> None:
    assert _importers(("soak", "bench"), ("tests",)) == []
