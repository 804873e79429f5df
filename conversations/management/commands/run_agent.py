"""`manage.py run_agent`: answer prompts on the `ai:<conversation>` channels this agent owns by
streaming Claude (with K processes running, each owns about 1/K of the conversations)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import uvloop
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations import events
from conversations.agent.config import STREAMING_PATTERNS, AgentConfig, ConfigError
from conversations.agent.identity import AgentIdInUse
from conversations.agent.supervisor import Agent, ControlChannelUnavailable
from runtimekit.loop_lag import LoopLagSampler
from runtimekit.quiet_gc import take_over_full_collections

logger = logging.getLogger("conversations.agent")

SERVICE_WAIT_SECONDS = 60.0


def _reachable(url: str) -> bool:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class Command(BaseCommand):
    help = (
        "Run the agent: subscribe to prompts on the conversation channels it owns and stream "
        "Claude's replies back. Settings (ABLY_*, ANTHROPIC_*, CLAUDE_*, STREAMING_PATTERN, "
        "MAX_PROMPT_CHARS, PROMPT_RATE_LIMIT_PER_MINUTE) come from the environment; the options "
        "below tune the process. SIGTERM/SIGINT finish in-flight replies within the grace "
        "period, then exit; a second signal exits at once. "
        "Scale out by running K processes with the same key and distinct --agent-id (the "
        f"default is unique): each is present on the Ably channel {events.AGENTS_CONTROL_CHANNEL}"
        " and attaches, hears and answers only the conversations it owns (rendezvous hashing "
        "over the live agents, about 1/K each); devices see that one agent in a conversation's "
        "presence. The key needs the presence and subscribe capabilities on "
        f'{events.AGENTS_CONTROL_CHANNEL} ({{"*":["*"]}} covers it); without them the agent '
        "exits at start (code 1). An agent that stops cleanly hands its conversations over at "
        "once; one that dies, after Ably's presence timeout (~15 s), and its replies in flight "
        "end as interrupted. See the README's scale-out section."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--agent-id",
            help="Name of this agent process, stored on the replies it claims. Default: "
            "<host>-<pid>-<random>, unique per process. A configured id is held through a "
            "lease in the database: starting a second process with the id of a running one is "
            "refused (non-zero exit); a restart under the id of a dead process (kill -9, host "
            "reboot) takes it over and marks the replies it left streaming as interrupted.",
        )
        parser.add_argument(
            "--lease-ttl",
            type=float,
            help="Seconds without a heartbeat after which an agent id's holder counts as gone "
            "and its streaming replies are interrupted (default 30).",
        )
        parser.add_argument(
            "--sweep-interval",
            type=float,
            help="Seconds between intake sweeps, which compare each active conversation's "
            "recent prompts (channel history) with the database and take in any that slipped "
            "through (default 15).",
        )
        parser.add_argument(
            "--connections",
            type=int,
            help="Realtime connections in the pool (default 4). Each carries at most "
            "--max-messages-per-second and --channels-per-connection; a conversation stays on "
            "the one it was attached on (the least loaded). A reply whose deltas wait at most "
            "30 ms sends about 19 msg/s, so a connection streams two at full pace; more replies per connection "
            "get bigger, less frequent chunks.",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            help="Replies streamed at once across all conversations (default 50); within one "
            "conversation prompts are answered one at a time, in order.",
        )
        parser.add_argument(
            "--flush-window",
            type=float,
            help="Seconds over which model deltas are coalesced into one Ably message "
            "(default 0.05).",
        )
        parser.add_argument(
            "--append-rollup-window",
            dest="append_rollup_window_ms",
            type=int,
            help="Ably's append rollup window on the agent's connections, in ms (default 0: "
            "the agent coalesces per flush window itself; Ably's default is 40).",
        )
        parser.add_argument(
            "--max-messages-per-second",
            type=float,
            help="Outbound messages per connection per second (default 40; Ably allows 50).",
        )
        parser.add_argument(
            "--channels-per-connection",
            type=int,
            dest="max_channels_per_connection",
            help="Attached channels per connection before idle ones are detached "
            "(default 200, Ably's limit).",
        )
        parser.add_argument(
            "--streaming-pattern",
            choices=STREAMING_PATTERNS,
            help="Overrides STREAMING_PATTERN.",
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            help="Seconds in-flight replies get to finish on SIGTERM (default 30); replies still "
            "running then end as interrupted.",
        )
        parser.add_argument(
            "--idle-detach-after",
            type=float,
            help="Detach a conversation after this many idle seconds with no device present "
            "(default 600).",
        )
        parser.add_argument(
            "--catch-up-window",
            type=float,
            help="At start-up, answer prompts published up to this many seconds ago while no "
            "agent ran (default 3600).",
        )
        parser.add_argument(
            "--discovery-interval",
            type=float,
            help="Seconds between listings of active conversation channels, a safety net for "
            "missed [meta]channel.lifecycle events (default 30; 2 without that capability).",
        )
        parser.add_argument(
            "--model-attempts",
            type=int,
            help="Attempts per model request for 429/529/5xx/connection errors (default 4).",
        )
        parser.add_argument(
            "--retry-base-delay",
            type=float,
            help="First retry backoff in seconds, doubled per retry up to 8s (default 0.5); "
            "a retry-after header wins.",
        )
        parser.add_argument(
            "--stall-timeout",
            type=float,
            help="Seconds a model stream may send nothing (not even a ping) before the reply "
            "is ended as a retryable error and the request is closed (default 60).",
        )
        parser.add_argument(
            "--publish-deadline",
            type=float,
            help="Seconds a reply's start, repair and stop messages keep trying while the "
            "Ably connection or channel is down, re-attaching as soon as it is back "
            "(default 60); a reply whose text could not be repaired ends as an error.",
        )
        parser.add_argument(
            "--thinking-budget",
            type=int,
            help="Extended-thinking token budget; streamed as its own `thinking` part "
            "(default 0: off).",
        )
        parser.add_argument(
            "--no-titles",
            action="store_false",
            dest="generate_titles",
            default=None,
            help="Do not ask the model to title new conversations.",
        )
        parser.add_argument(
            "--log-loop-lag",
            type=float,
            metavar="SECONDS",
            help="Every SECONDS, log the event loop's worst lag over that time (how late it ran "
            "what was due; the relay bench reads it). Default: off.",
        )
        parser.add_argument(
            "--wait-for-services",
            action="store_true",
            help=f"Wait up to {SERVICE_WAIT_SECONDS:.0f}s for the Ably and Anthropic endpoints "
            "to accept connections before starting (for `make run`).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        overrides = {
            key: options.get(key)
            for key in (
                "agent_id",
                "lease_ttl",
                "sweep_interval",
                "connections",
                "concurrency",
                "flush_window",
                "append_rollup_window_ms",
                "max_messages_per_second",
                "max_channels_per_connection",
                "streaming_pattern",
                "grace_period",
                "idle_detach_after",
                "catch_up_window",
                "discovery_interval",
                "model_attempts",
                "retry_base_delay",
                "stall_timeout",
                "publish_deadline",
                "thinking_budget",
                "generate_titles",
            )
        }
        try:
            config = AgentConfig.from_settings(**overrides)
        except ConfigError as error:
            raise CommandError(str(error)) from None
        if options["wait_for_services"]:
            self._wait_for_services(config)
        # uvloop, as uvicorn picks for its servers: the agent's per-token work is mostly socket
        # reads and writes, which cost less CPU on it than on asyncio's default loop.
        self.stopped_by_signal = False
        self.log_loop_lag = options.get("log_loop_lag") or 0.0
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._run(config))
        if self.stopped_by_signal:
            # Every reply is saved and every connection closed. The interpreter's own teardown
            # (a full garbage collection of the heap, then every module) takes seconds after a
            # busy run, eating into the few a process manager allows (honcho's 5 s on Ctrl-C)
            # before it kills the process: skip it.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def _wait_for_services(self, config: AgentConfig) -> None:
        endpoints = [u for u in (config.ably_endpoint, config.anthropic_base_url) if u]
        deadline = time.monotonic() + SERVICE_WAIT_SECONDS
        for url in endpoints:
            while not _reachable(url):
                if time.monotonic() > deadline:
                    raise CommandError(f"{url} did not accept connections")
                time.sleep(0.5)

    @staticmethod
    async def _collect_when_quiet(agent: Agent) -> None:
        """Once the agent serves, full garbage collections wait for a quiet moment (or a
        minute): one in the middle of a burst stalls every reply being relayed (issue 14
        measured 88-263 ms). As the Ably stand-in does; see runtimekit/quiet_gc.py."""
        await agent.started.wait()
        collector = take_over_full_collections()
        logger.info(
            "full garbage collections now wait for a quiet moment (%d start-up objects frozen)",
            gc.get_freeze_count(),
        )
        await collector.run()

    @staticmethod
    async def _log_loop_lag(interval: float) -> None:
        sampler = LoopLagSampler()
        sampling = asyncio.create_task(sampler.run())
        try:
            while True:
                await asyncio.sleep(interval)
                logger.info("event loop worst lag %.1f ms", sampler.take_worst() * 1000)
        finally:
            sampling.cancel()

    async def _run(self, config: AgentConfig) -> None:
        stop = asyncio.Event()
        agent = Agent(config)
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            self.stopped_by_signal = True
            if signals_seen == 1:
                logger.info("signal %d: finishing in-flight replies", signum)
                stop.set()
            else:
                logger.info("second signal: interrupting in-flight replies now")
                for run in list(agent.runs):
                    run.abort(events.Status.INTERRUPTED)

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        helpers = [asyncio.create_task(self._collect_when_quiet(agent), name="quiet gc")]
        if self.log_loop_lag:
            helpers.append(asyncio.create_task(self._log_loop_lag(self.log_loop_lag)))
        try:
            await agent.run(stop)
        except (ConnectionError, AgentIdInUse, ControlChannelUnavailable) as error:
            raise CommandError(str(error)) from None
        finally:
            for helper in helpers:
                helper.cancel()
        if agent.lease_lost.is_set():
            raise CommandError(
                f"agent id {config.agent_id!r} was taken over by another process; stopped"
            )
