"""`python -m emulators.ably --host 127.0.0.1 --port 8788`: the Ably stand-in as a process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvicorn
import uvloop

from runtimekit.quiet_gc import take_over_full_collections

from .config import DEFAULT_KEY, HubConfig, NamespaceRule
from .server import KEEP_ALIVE_SECONDS, AblyApp, listening_socket


def parse_namespace(value: str) -> NamespaceRule:
    """`name[:mutable][:persisted]`, e.g. `ai:mutable` or `logs:persisted`."""
    name, *flags = value.split(":")
    unknown = set(flags) - {"mutable", "persisted"}
    if not name or unknown:
        raise argparse.ArgumentTypeError(
            f"invalid namespace rule {value!r}: use name[:mutable][:persisted]"
        )
    return NamespaceRule(name, mutable_messages="mutable" in flags, persisted="persisted" in flags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.ably", description="Local Ably-compatible realtime + REST server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8788)
    parser.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="APPID.KEYID:SECRET",
        help=f"API key with capability {{'*':['*']}} (repeatable; default {DEFAULT_KEY})",
    )
    parser.add_argument(
        "--capability",
        action="append",
        dest="capabilities",
        default=[],
        metavar="KEYNAME=JSON",
        help='capability of one --key, e.g. devapp.devkey=\'{"[*]*":["*"]}\'',
    )
    parser.add_argument(
        "--revocable-tokens",
        action="append",
        dest="revocable_token_keys",
        default=[],
        metavar="KEYNAME",
        help="turn on Ably's 'revocable tokens' setting for this key (repeatable): "
        "POST /keys/KEYNAME/revokeTokens works, its tokens live at most 1 hour "
        f"(default: {DEFAULT_KEY.split(':')[0]} only)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        type=parse_namespace,
        metavar="NAME[:mutable][:persisted]",
        help="channel namespace rule (repeatable; default: ai:mutable:persisted)",
    )
    parser.add_argument("--history-retention", type=int, default=24 * 3600, metavar="SECONDS")
    parser.add_argument("--presence-leave-delay", type=int, default=15_000, metavar="MS")
    parser.add_argument("--max-message-size", type=int, default=65_536, metavar="BYTES")
    parser.add_argument("--max-inbound-rate", type=int, default=50, metavar="MSGS_PER_S")
    parser.add_argument("--max-channels-per-connection", type=int, default=200)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--tls-port",
        type=int,
        metavar="PORT",
        help="also serve the same app over TLS on this port (needs --tls-cert and --tls-key); "
        "ably-python's own test suite, for one, only talks TLS on 443",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="certificate chain for --tls-port")
    parser.add_argument("--tls-key", metavar="PEM", help="private key for --tls-port")
    return parser


def config_from_args(args: argparse.Namespace) -> HubConfig:
    config = HubConfig(
        history_retention_ms=args.history_retention * 1000,
        presence_leave_delay_ms=args.presence_leave_delay,
        max_message_size=args.max_message_size,
        max_inbound_rate=args.max_inbound_rate,
        max_channels_per_connection=args.max_channels_per_connection,
    )
    if args.keys:
        config.keys = args.keys
    for entry in args.capabilities:
        key_name, separator, capability = entry.partition("=")
        if not separator:
            raise ValueError(f"--capability expects KEYNAME=JSON, got {entry!r}")
        config.key_capabilities[key_name] = capability
    if args.revocable_token_keys:
        config.revocable_token_keys = list(args.revocable_token_keys)
    if args.namespaces:
        config.namespaces = {rule.name: rule for rule in args.namespaces}
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s ably %(levelname)s %(message)s"
    )
    try:
        app = AblyApp(config_from_args(args))
        # Connection events (connected/resumed/disconnected/closed) are logged at INFO.
    except Exception as exc:  # a bad --key should say so, not print a traceback
        print(f"emulators.ably: {exc}", file=sys.stderr)
        return 2
    if args.tls_port is not None and not (args.tls_cert and args.tls_key):
        print("emulators.ably: --tls-port needs --tls-cert and --tls-key", file=sys.stderr)
        return 2

    def server_config(port: int, **tls: str) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            host=args.host,
            port=port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
            ws_max_size=16 * 1024 * 1024,
            ws_per_message_deflate=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=2,
            **tls,
        )

    server = uvicorn.Server(server_config(args.port))
    # One app (one hub) behind both listeners: a client may switch tls on and off per request.
    tls_server = (
        uvicorn.Server(
            server_config(args.tls_port, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
        )
        if args.tls_port is not None
        else None
    )

    try:
        sock = listening_socket(args.host, args.port)
        tls_sock = listening_socket(args.host, args.tls_port) if tls_server else None
    except OSError as exc:
        print(f"emulators.ably: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True
        if tls_server is not None:
            tls_server.should_exit = True

    # uvicorn swaps in its own handlers while serving and re-raises the signal afterwards with
    # whatever was installed before: make that a graceful stop too, so SIGTERM exits 0.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    async def serve() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        tls_serving = (
            asyncio.create_task(tls_server.serve(sockets=[tls_sock]))
            if tls_server is not None and tls_sock is not None
            else None
        )
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            logging.getLogger("emulators.ably").info(
                "Ably stand-in on http://%s:%s%s (keys: %s)",
                args.host,
                sock.getsockname()[1],
                f" and https://{args.host}:{tls_sock.getsockname()[1]}" if tls_sock else "",
                ", ".join(key.split(":")[0] for key in app.config.keys),
            )
        # Full collections walk every connection's state: run them when the stand-in is quiet,
        # not in the middle of a broadcast (runtimekit/quiet_gc.py).
        collector = asyncio.create_task(take_over_full_collections().run())
        await serving
        collector.cancel()
        if tls_serving is not None:
            if tls_server is not None:
                tls_server.should_exit = True
            await tls_serving

    # uvloop, as uvicorn's own `run()` would pick: the stand-in's work is mostly socket writes
    # (one per frame per subscriber).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
