"""conversations.ably_endpoint: one ABLY_ENDPOINT URL -> what the browser's ably-js needs."""

from __future__ import annotations

import pytest

from conversations.ably_endpoint import (
    ABLY_DEFAULT_CONNECT_SOURCES,
    AblyEndpoint,
    csp_connect_sources,
    js_client_options,
    parse_endpoint,
)


def test_empty_endpoint_means_real_ably_defaults() -> None:
    assert parse_endpoint("") is None
    assert js_client_options("") == {}
    assert csp_connect_sources("") == list(ABLY_DEFAULT_CONNECT_SOURCES)


def test_endpoint_urls_name_host_port_and_tls() -> None:
    assert parse_endpoint("http://127.0.0.1:8788") == AblyEndpoint("127.0.0.1", 8788, False)
    assert parse_endpoint("127.0.0.1:8788") == AblyEndpoint("127.0.0.1", 8788, False)
    assert parse_endpoint("wss://ably.example.com") == AblyEndpoint("ably.example.com", 443, True)


@pytest.mark.parametrize("bad", ["ftp://x:1", "http://", "::::"])
def test_malformed_endpoint_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="ABLY_ENDPOINT"):
        parse_endpoint(bad)


def test_js_options_point_at_host_and_port_without_fallbacks() -> None:
    assert js_client_options("http://localhost:9000") == {
        "endpoint": "localhost",
        "port": 9000,
        "tls": False,
        "fallbackHosts": [],
        "disableConnectivityCheck": True,
        "transports": ["web_socket"],
    }
    assert js_client_options("https://ably.example.com")["tlsPort"] == 443


def test_csp_allows_exactly_the_endpoint() -> None:
    assert csp_connect_sources("http://127.0.0.1:8788") == [
        "http://127.0.0.1:8788",
        "ws://127.0.0.1:8788",
    ]
    assert csp_connect_sources("https://[::1]:8443") == ["https://[::1]:8443", "wss://[::1]:8443"]
