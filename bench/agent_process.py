"""`python -m bench.agent_process <run_agent options>`: `manage.py run_agent`, with the SDKs'
per-message INFO logging turned down.

With the site's default LOG_LEVEL=INFO, ably-python logs every protocol message it sends or
receives and httpx every request: at hundreds of messages a second that logging alone costs more
CPU than the relaying being measured. The benchmark keeps the agent's own INFO lines (one per
reply, which it reads) and measures the agent as it would run with those SDK loggers at WARNING.
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    for name in ("ably", "httpx", "httpcore", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from django.core.management import call_command

    call_command("run_agent", *argv)


if __name__ == "__main__":
    main(sys.argv[1:])
