"""Exactly one module of the product imports ably-python: the agent's Ably adapter."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("conversations", "chatsite")
ADAPTER = Path("conversations/agent/ably_adapter.py")


def _imports_ably(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "ably" or name.startswith("ably.") for name in names):
            return True
    return False


def test_the_scan_recognises_every_import_form() -> None:
    assert _imports_ably("import ably")
    assert _imports_ably("import os, ably.types.message as m")
    assert _imports_ably("from ably.types.message import Message")
    assert _imports_ably("def f():\n    from ably import AblyRest\n")
    assert not _imports_ably("from . import ably_adapter\nimport ablyish\nfrom .ably import x")


def test_only_the_adapter_imports_ably() -> None:
    importers = sorted(
        path.relative_to(REPO_ROOT)
        for package in PRODUCT_PACKAGES
        for path in (REPO_ROOT / package).rglob("*.py")
        if _imports_ably(path.read_text())
    )
    assert importers == [ADAPTER]
