"""Who an agent process is, and how the agent knows a reply's writer is gone.

Every reply row names the agent id that claimed it. Two rules keep that name meaningful:

- **Unique by default.** Without `--agent-id` a process is `<host>-<pid>-<random>`, so two
  processes on one host never share an id by accident.
- **One live holder per id: a lease.** At start the process takes the `AgentLease` row of its
  id and renews it every `lease_ttl / 6` seconds (at most 5 s) while it runs; at shutdown it
  releases it. A lease is free when nobody holds it, when it lapsed (not renewed for
  `lease_ttl`), or when its holder is a process on this host that no longer exists (a restart
  after kill -9 need not wait). A lease held by a process on another host that was renewed
  lately is watched for up to `lease_ttl`: if it is renewed meanwhile, its holder is live and
  this start is refused (`AgentIdInUse`, a clear message and a non-zero exit from
  `run_agent`); if not, it lapses and is taken over.

So a reply is marked `interrupted` only when its writer is known gone: its id is held by this
process (taken over from a dead or lapsed holder), its id's lease lapsed, or (checked per
channel) its agent left the channel's presence. Never because another process started with
the same name.

A process that finds its own lease taken over (it stalled for longer than `lease_ttl`, and
another process with its id started and interrupted its replies) stops: it is no longer the
writer of record.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import socket
import time

from conversations import actions
from conversations.models import AgentLease

from .store import db_retrying, now

logger = logging.getLogger(__name__)

# How often a lease watched at start is read again while waiting to see whether it is renewed.
LEASE_POLL_SECONDS = 0.5
MAX_RENEW_INTERVAL = 5.0
# The heartbeat a released lease carries: long lapsed for any ttl.
RELEASED_AT = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class AgentIdInUse(RuntimeError):
    """Another live process holds this agent id."""


def default_agent_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Someone else's process: it exists.
    return True


def renew_interval(ttl: float) -> float:
    return min(MAX_RENEW_INTERVAL, ttl / 6)


class Lease:
    """This process's hold on its agent id."""

    def __init__(self, agent_id: str, ttl: float) -> None:
        self.agent_id = agent_id
        self.ttl = ttl
        self.instance = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # The holder this process took the id over from (None: the id was free).
        self.previous: AgentLease | None = None
        self.held = False

    def _holder_is_dead(self, lease: AgentLease) -> bool:
        return lease.host == self.host and lease.pid != self.pid and not process_exists(lease.pid)

    async def _take(self) -> tuple[bool, AgentLease | None]:
        return await db_retrying(
            actions.take_agent_lease,
            self.agent_id,
            instance=self.instance,
            host=self.host,
            pid=self.pid,
            lapsed_before=now() - datetime.timedelta(seconds=self.ttl),
            holder_is_dead=self._holder_is_dead,
        )

    async def acquire(self) -> None:
        """Take the id, waiting up to one ttl to tell a live holder from a lapsing one."""
        deadline = time.monotonic() + self.ttl + 2 * LEASE_POLL_SECONDS
        first_seen: datetime.datetime | None = None
        while True:
            taken, lease = await self._take()
            if taken:
                self.previous = lease
                self.held = True
                if lease is not None:
                    logger.info(
                        "agent id %s taken over from %s (pid %s), which is gone",
                        self.agent_id,
                        lease.host,
                        lease.pid,
                    )
                return
            if lease is None:
                # Created by another process this instant, or gone again: look once more.
                await asyncio.sleep(LEASE_POLL_SECONDS)
                continue
            if first_seen is None:
                first_seen = lease.heartbeat_at
                logger.info(
                    "agent id %s is held by %s (pid %s); checking whether it is still running",
                    self.agent_id,
                    lease.host,
                    lease.pid,
                )
            holder_is_live = lease.heartbeat_at > first_seen or (
                lease.host == self.host and process_exists(lease.pid)
            )
            if holder_is_live or time.monotonic() > deadline:
                started = lease.started_at.strftime("%Y-%m-%d %H:%M:%S")
                raise AgentIdInUse(
                    f"agent id {self.agent_id!r} is in use by a running agent (host "
                    f"{lease.host}, pid {lease.pid}, started {started} UTC). Give each agent "
                    "process its own --agent-id, or leave it out for a unique one."
                )
            await asyncio.sleep(LEASE_POLL_SECONDS)

    async def renew(self) -> bool:
        """Renew the lease; False if another process took it over."""
        return await db_retrying(actions.renew_agent_lease, self.agent_id, instance=self.instance)

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            await db_retrying(
                actions.release_agent_lease,
                self.agent_id,
                instance=self.instance,
                released_at=RELEASED_AT,
            )
        except Exception as error:  # noqa: BLE001 - it lapses on its own after one ttl
            logger.warning("releasing agent id %s failed: %r", self.agent_id, error)
