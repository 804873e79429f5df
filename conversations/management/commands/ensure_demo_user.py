"""Create (or reset) the demo logins `make run` prints: a user and a staff superuser."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    staff: bool


def demo_logins() -> list[DemoLogin]:
    """The demo accounts; passwords can be changed with DEMO_PASSWORD / DEMO_ADMIN_PASSWORD."""
    return [
        DemoLogin("demo", os.environ.get("DEMO_PASSWORD", "demo-chat-password"), staff=False),
        DemoLogin(
            "admin", os.environ.get("DEMO_ADMIN_PASSWORD", "admin-chat-password"), staff=True
        ),
    ]


class Command(BaseCommand):
    help = "Create or reset the demo user and the demo admin (idempotent) and print their logins."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="Also on a site configured with a real Ably key (well-known passwords!).",
        )

    def handle(self, *args: Any, force: bool = False, **options: Any) -> None:
        if settings.ABLY_API_KEY != settings.DEV_ABLY_API_KEY and not force:
            raise CommandError(
                "This site uses a real ABLY_API_KEY: refusing to create logins with well-known "
                "passwords. Use `manage.py createsuperuser`, or pass --force."
            )
        user_model = get_user_model()
        for login in demo_logins():
            user, created = user_model.objects.get_or_create(username=login.username)
            user.set_password(login.password)
            user.is_active = True
            user.is_staff = login.staff
            user.is_superuser = login.staff
            user.save()
            verb = "Created" if created else "Reset"
            role = "staff superuser" if login.staff else "user"
            self.stdout.write(f"{verb} {role} {login.username!r} with password {login.password!r}")
