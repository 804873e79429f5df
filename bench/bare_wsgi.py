"""The smallest WSGI app, for the token benchmark: what one gunicorn sync worker costs per
request on this machine before any Django, so `/ably/token` can be read against it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# A body shaped like the endpoint's (the load generator checks for a JWT's two dots).
BODY = b"eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2lnbmF0dXJl"


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/jwt"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]
