"""Delete uploads that were never sent with a prompt (a composer closed with files in it)."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from conversations.models import Attachment


class Command(BaseCommand):
    help = "Delete attachments never sent with a prompt and older than --hours (files included)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--hours", type=float, default=24.0, help="minimum age (default 24)")
        parser.add_argument("--dry-run", action="store_true", help="only count them")

    def handle(self, *args: Any, hours: float, dry_run: bool, **options: Any) -> None:
        cutoff = timezone.now() - datetime.timedelta(hours=hours)
        unsent = Attachment.objects.filter(messages__isnull=True, created_at__lt=cutoff)
        count = unsent.count()
        if not dry_run:
            # Each row's stored file goes once the deletion commits (conversations.attachments).
            with transaction.atomic():
                unsent.delete()
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {count} unsent attachment{'' if count == 1 else 's'}")
