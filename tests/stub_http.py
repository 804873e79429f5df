"""A local HTTP server with one route (aiohttp, an ephemeral port), for tests of the clients
that call Ably's or Anthropic's HTTP APIs: it answers what a test needs the real one to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_one_route(method: str, path: str, handler: Handler) -> tuple[web.AppRunner, str]:
    """Serve `handler` at `method path`; returns the runner (`await runner.cleanup()` stops
    it) and the server's base URL."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
