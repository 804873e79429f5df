"""Wait for the web server to answer, then print where to go and how to log in (Procfile.dev)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from .ensure_demo_user import demo_logins

POLL_INTERVAL_SECONDS = 0.5


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('WEB_PORT', '8000')}/"


def server_answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2.0, follow_redirects=False)
    except httpx.HTTPError:
        return False
    return True


class Command(BaseCommand):
    help = "Wait until the web server answers, then print its URL and the demo logins."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default=None, help="Default: http://127.0.0.1:$WEB_PORT/")
        parser.add_argument("--timeout", type=float, default=120.0, help="Seconds to wait.")

    def handle(
        self, *args: Any, url: str | None = None, timeout: float = 120.0, **options: Any
    ) -> None:
        url = url or default_url()
        # One INFO line per probe from httpx would bury the banner in the combined dev log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        deadline = time.monotonic() + timeout
        while not server_answers(url):
            if time.monotonic() >= deadline:
                raise CommandError(f"The web server at {url} did not answer within {timeout:g}s.")
            time.sleep(POLL_INTERVAL_SECONDS)
        logins = "\n".join(
            f"    {login.username} / {login.password}{'  (staff: /admin/)' if login.staff else ''}"
            for login in demo_logins()
        )
        rule = "=" * 64
        self.stdout.write(
            f"\n{rule}\n  Chat with Claude is running: {url}\n  Log in as:\n{logins}\n{rule}\n"
        )
