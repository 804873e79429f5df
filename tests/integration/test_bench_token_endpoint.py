"""The token endpoint benchmark, once in its tiny configuration (figures sane, no timings)."""

from __future__ import annotations

import pytest

from tests.integration.test_bench_agent_relay import run_bench


@pytest.mark.slow
def test_token_endpoint_tiny_mints_tokens_without_errors(tmp_path):
    _, figures = run_bench("token_endpoint", tmp_path)
    for label in ("/ably/token", "/ably/token?conversation", "bare_wsgi", "token_request_exchange"):
        measured = figures[label]
        assert measured["requests"] > 0, (label, measured)
        assert measured["errors"] == 0, (label, measured["first_error"])
        assert measured["requests_per_second"] > 0
