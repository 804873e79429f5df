"""Token endpoint: requests/s of `/ably/token` under gunicorn (one sync worker), beside the
TokenRequest exchange (`POST /keys/{keyName}/requestToken`) against the Ably stand-in.

The browser's path is one request to Django per token: a session lookup, the user, the user's
conversations (the capability) and an HS256 JWT. ably-python's path with a key over plain HTTP is
a TokenRequest signed locally (by the SDK itself here) and exchanged at the stand-in. Both are
driven by the same loopback generator (`bench.httpload`), fresh connection per request (a
sync worker closes every connection anyway, as it does behind a proxy in production).

Django runs as in production, bar the database (SQLite here): sessions are `cached_db` in
Redis (`CACHE_URL`, default redis://127.0.0.1:6379/1) and database connections persist. A bare
WSGI app (`bench.bare_wsgi`) under the same gunicorn configuration gives the ceiling one worker
starts from on the machine at hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
from pathlib import Path
from typing import Any

from bench import common, httpload

CONVERSATIONS_PER_USER = 20
DEFAULT_CACHE_URL = "redis://127.0.0.1:6379/1"


def _session_cookie() -> tuple[str, str]:
    """A logged-in session for a user with some conversations, made the way login makes one."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    from conversations.models import Conversation

    SessionStore = import_module(settings.SESSION_ENGINE).SessionStore  # noqa: N806

    user = common.bulk_users(1, "bench-token-")[0]
    Conversation.objects.bulk_create(
        [Conversation(owner=user) for _ in range(CONVERSATIONS_PER_USER)]
    )
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    conversation = Conversation.objects.filter(owner=user).first()
    assert conversation is not None
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}", str(conversation.pk)


async def _token_requests(count: int, ably_port: int) -> list[bytes]:
    """`count` TokenRequests signed by ably-python (each nonce is single-use)."""
    from ably import AblyRest

    from conversations.agent.ably_adapter import client_options

    rest = AblyRest(key=common.DEV_ABLY_KEY, **client_options(f"http://127.0.0.1:{ably_port}"))
    try:
        requests = []
        for index in range(count):
            token_request = await rest.auth.create_token_request(
                token_params={"client_id": f"user-{index % 50 + 1}"}
            )
            requests.append(json.dumps(token_request.to_dict()).encode())
        return requests
    finally:
        await rest.close()


def _get(path: str, cookie: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ).encode()


def _post_json(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def bench(tiny: bool, env: dict[str, str], workdir: Path) -> common.BenchResult:
    seconds = 1.0 if tiny else 10.0
    concurrency = 4 if tiny else 16
    cookie, conversation_id = await asyncio.to_thread(_session_cookie)
    rows: list[list[Any]] = []
    figures: dict[str, Any] = {}
    with common.services() as started:
        ably, ably_port = common.start_ably(workdir)
        started.append(ably)
        web_env = {
            **env,
            "ABLY_ENDPOINT": f"http://127.0.0.1:{ably_port}",
            "ABLY_API_KEY": common.DEV_ABLY_KEY,
        }
        web_port, worker_pid = _start_gunicorn(started, "chatsite.wsgi", workdir, web_env)

        def is_jwt(body: bytes) -> bool:
            return body.rstrip().rsplit(b"\r\n\r\n", 1)[-1].count(b".") == 2

        async def measure(port: int, pid: int, request: bytes) -> tuple[httpload.LoadResult, float]:
            # Warm up (imports, first queries) outside the measurement.
            await httpload.load(port, lambda _i: request, seconds=0.3, concurrency=2)
            cpu_before = common.cpu_seconds(pid)
            result = await httpload.load(
                port, lambda _i: request, seconds=seconds, concurrency=concurrency, check=is_jwt
            )
            return result, common.cpu_seconds(pid) - cpu_before

        cases = [
            ("/ably/token (all conversations)", "/ably/token"),
            ("/ably/token?conversation=<id>", f"/ably/token?conversation={conversation_id}"),
        ]
        for label, path in cases:
            result, server_cpu = await measure(web_port, worker_pid, _get(path, cookie))
            rows.append(_row(label, "gunicorn, 1 sync worker", result, server_cpu))
            figures[path.split("?")[0] + ("?conversation" if "?" in path else "")] = _figures(
                result, server_cpu
            )

        # The same server configuration with nothing behind it: the ceiling any Django view on
        # one worker starts from, on this machine.
        bare_port, bare_pid = _start_gunicorn(started, "bench.bare_wsgi", workdir, env)
        result, server_cpu = await measure(bare_port, bare_pid, _get("/ably/token", cookie))
        rows.append(
            _row("bare WSGI app (no Django)", "gunicorn, 1 sync worker", result, server_cpu)
        )
        figures["bare_wsgi"] = _figures(result, server_cpu)

        # The stand-in is one asyncio process; a TokenRequest is single-use, so sign plenty.
        expected = int((1000 if tiny else 3000) * seconds)
        token_requests = await _token_requests(expected, ably_port)
        key_name = common.DEV_ABLY_KEY.split(":")[0]
        path = f"/keys/{key_name}/requestToken"
        cpu_before = common.cpu_seconds(ably.pid)

        def exchange(index: int) -> bytes | None:
            if index >= len(token_requests):
                return None
            return _post_json(path, token_requests[index])

        result = await httpload.load(
            ably_port,
            exchange,
            seconds=seconds,
            concurrency=concurrency,
            check=lambda body: b'"token"' in body,
        )
        server_cpu = common.cpu_seconds(ably.pid) - cpu_before
        rows.append(_row("TokenRequest exchange", "Ably stand-in (uvicorn)", result, server_cpu))
        figures["token_request_exchange"] = _figures(result, server_cpu)
        if result.requests + result.errors >= len(token_requests):
            common.note(f"  the {len(token_requests):,} signed TokenRequests ran out early")

    common.print_table(
        f"Token endpoint ({concurrency} concurrent loopback clients, {seconds:.0f}s each; "
        f"Django with {_session_backend()} sessions in Redis, persistent DB connections, SQLite)",
        [
            "endpoint",
            "server",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU ms/req",
            "req/s per CPU-second",
            "generator CPU s",
        ],
        rows,
    )
    for label, result_figures in figures.items():
        if result_figures.get("first_error"):
            common.note(f"  first error on {label}: {result_figures['first_error']}")
    token_rps = figures["/ably/token"]["requests_per_second"]
    exchange_rps = figures["token_request_exchange"]["requests_per_second"]
    cpu_ms = figures["/ably/token"]["server_cpu_ms_per_request"]
    bare = figures["bare_wsgi"]
    summary = (
        f"/ably/token {common.fmt(token_rps, 0)} req/s on one gunicorn worker, sessions "
        f"{_session_backend()} in Redis (target >= 1,500: "
        f"{'met' if token_rps >= 1500 else 'NOT met'}; {common.fmt(cpu_ms)} ms CPU/request = "
        f"{common.fmt(1000 / cpu_ms if cpu_ms else math.nan, 0)} req/s per CPU-second); "
        f"TokenRequest exchange at the stand-in {common.fmt(exchange_rps, 0)} req/s; a bare "
        f"WSGI app on the same worker {common.fmt(bare['requests_per_second'], 0)} req/s "
        f"({common.fmt(bare['server_cpu_ms_per_request'], 2)} ms CPU/request)"
    )
    return common.BenchResult("token_endpoint", summary, figures)


def _check_cache(cache_url: str) -> None:
    """Fail clearly when the production-like configuration cannot run: Redis must answer."""
    from django.conf import settings
    from django.core.cache import cache

    if not settings.SESSION_ENGINE.endswith("cached_db"):
        raise common.BenchError(
            f"CACHE_URL={cache_url} is not a shared cache: sessions would not be cached_db"
        )
    try:
        cache.set("bench-token-endpoint-ping", 1, 5)
    except Exception as exc:
        raise common.BenchError(
            f"Redis is not reachable at CACHE_URL={cache_url} ({exc}); start it "
            "(redis-server --daemonize yes) or point CACHE_URL at one"
        ) from exc


def _session_backend() -> str:
    from django.conf import settings

    return settings.SESSION_ENGINE.rsplit(".", 1)[-1]


def _start_gunicorn(
    started: list[common.Service], app: str, workdir: Path, env: dict[str, str]
) -> tuple[int, int]:
    """gunicorn with one sync worker serving `app`: its port and its worker's pid."""
    port = common.free_port()
    gunicorn = common.Service(
        f"gunicorn-{app}",
        [
            str(Path(common.PYTHON).parent / "gunicorn"),
            app,
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        workdir,
        env=env,
    )
    started.append(gunicorn)
    common.wait_for_port(port, gunicorn.process, 30, gunicorn.log_path)
    return port, _gunicorn_worker(gunicorn.pid)


def _gunicorn_worker(master_pid: int) -> int:
    """The worker's pid (its CPU is the endpoint's cost; the master only supervises)."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{master_pid}/task").iterdir():
            children = (child / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.05)
    return master_pid


def _figures(result: httpload.LoadResult, server_cpu: float) -> dict[str, Any]:
    return {
        "requests_per_second": result.per_second,
        "requests": result.requests,
        "errors": result.errors,
        "p50_ms": common.percentile(result.latencies_ms, 0.5),
        "p99_ms": common.percentile(result.latencies_ms, 0.99),
        "server_cpu_ms_per_request": server_cpu / result.requests * 1000
        if result.requests
        else math.nan,
        "generator_cpu_seconds": result.generator_cpu,
        "first_error": result.first_error,
    }


def _row(label: str, server: str, result: httpload.LoadResult, server_cpu: float) -> list[Any]:
    f = _figures(result, server_cpu)
    return [
        label,
        server,
        f["requests_per_second"],
        f["p50_ms"],
        f["p99_ms"],
        result.errors,
        f["server_cpu_ms_per_request"],
        1000 / f["server_cpu_ms_per_request"] if f["server_cpu_ms_per_request"] else math.nan,
        result.generator_cpu,
    ]


def main(argv: list[str] | None = None) -> common.BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench token_endpoint")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    cache_url = os.environ.get("CACHE_URL") or DEFAULT_CACHE_URL
    with common.workdir("token") as workdir:
        env = common.setup_django(workdir / "bench.sqlite3", CACHE_URL=cache_url)
        _check_cache(cache_url)
        result = asyncio.run(bench(args.tiny, env, workdir)).finish()
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
