"""`manage.py run_agent`: documented options and clear errors for bad ones."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from conversations.management.commands.run_agent import Command


def test_help_documents_the_operational_options():
    help_text = Command().create_parser("manage.py", "run_agent").format_help()
    for option in (
        "--connections",
        "--concurrency",
        "--flush-window",
        "--grace-period",
        "--agent-id",
        "--max-messages-per-second",
        "--channels-per-connection",
        "--streaming-pattern",
        "--stall-timeout",
        "--publish-deadline",
    ):
        assert option in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--connections", "0"], "connections must be at least 1"),
        (["--max-messages-per-second", "80"], "max messages per second"),
        (["--channels-per-connection", "500"], "channels per connection"),
        (["--flush-window", "-1"], "flush window"),
        (["--stall-timeout", "0"], "stall timeout"),
        (["--publish-deadline", "-1"], "publish deadline"),
        (["--append-rollup-window", "501"], "append rollup window"),
    ],
)
def test_bad_options_fail_with_a_clear_error_before_connecting(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("run_agent", *args)
