"""The pages benchmark, once in its tiny configuration: it renders the stored turns and Chromium
paints every published token, for both streaming patterns (no timing asserts)."""

from __future__ import annotations

import pytest

from tests.integration.test_bench_agent_relay import run_bench


@pytest.mark.slow
@pytest.mark.browser
def test_pages_tiny_renders_and_paints_every_token(tmp_path):
    _, figures = run_bench("pages", tmp_path)
    render = figures["render"]
    assert render["turns"] == 40
    assert render["bytes"] > 0 and render["p50_ms"] > 0
    for pattern in ("message-per-response", "message-per-token"):
        paint = figures["paint"][pattern]
        assert paint["painted"] == paint["tokens"] > 0, (pattern, paint)
        assert paint["p50_ms"] > 0
