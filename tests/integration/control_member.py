"""A control-channel member in a process of its own, for tests that kill -9 an agent.

    python -m tests.integration.control_member ENDPOINT KEY CLIENT_ID AGENT_ID

Enters the agents' control channel through `ControlChannel`, prints `entered`, then waits to be
killed.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def main(endpoint: str, key: str, client_id: str, agent_id: str) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    django.setup()
    from conversations import events
    from conversations.agent.ably_adapter import AblyRealtime, client_options
    from conversations.agent.control import ControlChannel
    from emulators.ably.testing import connected

    # Built as the product builds its clients (this process has no pytest conftest).
    client = await connected(AblyRealtime(key=key, **client_options(endpoint, client_id=client_id)))
    control = ControlChannel(client.channels.get(events.AGENTS_CONTROL_CHANNEL), agent_id)
    await control.start()
    print("entered", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
