"""A small loopback HTTP/1.1 load generator on asyncio (no external tool needed offline).

Each worker sends a request on a fresh connection (`Connection: close`, which is all gunicorn's
sync worker offers anyway), reads the response to EOF and checks the status. The generator's own
CPU time is reported beside the server's so a saturated generator is visible, not hidden.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import common


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str = ""
    generator_cpu: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _one(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        body = await reader.read()  # to EOF: the server closes after one response
    finally:
        writer.close()
    status_line = body.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, body


async def load(
    port: int,
    make_request: Callable[[int], bytes | None],
    *,
    seconds: float,
    concurrency: int,
    expect_status: int = 200,
    check: Callable[[bytes], bool] | None = None,
) -> LoadResult:
    """Drive `concurrency` workers for `seconds`; `make_request(i)` builds the i-th request
    (None: no more requests, e.g. single-use credentials ran out; the run ends there)."""
    import os

    result = LoadResult()
    counter = iter(range(1 << 62))
    cpu_before = common.cpu_seconds(os.getpid())
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            request = make_request(next(counter))
            if request is None:
                break
            sent = time.perf_counter()
            try:
                status, body = await _one(port, request)
                ok = status == expect_status and (check is None or check(body))
            except OSError as error:
                ok, body = False, repr(error).encode()
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            if ok:
                result.requests += 1
            else:
                result.errors += 1
                if not result.first_error:
                    result.first_error = body[:300].decode(errors="replace")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.generator_cpu = common.cpu_seconds(os.getpid()) - cpu_before
    return result
