"""Command line: ``osmium-gateway serve|migrate|sessions ...`` (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from gateway import __version__, config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osmium-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"osmium-gateway {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    serve = verbs.add_parser("serve", help="run a gateway node",
                             description="Run a gateway node. Every option can also be set "
                                         "with the GATEWAY_* variable named in its help.")
    config.add_arguments(serve)
    migrate = verbs.add_parser("migrate", help="apply pending database migrations and exit")
    config.add_arguments(migrate)
    sessions = verbs.add_parser("sessions", help="list or revoke a user's sessions (operators)")
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="a user's sessions and where they are live")
    listing.add_argument("--user", type=int, required=True, help="user id")
    config.add_arguments(listing)
    revoke = actions.add_parser("revoke", help="revoke sessions and kick their live sockets; "
                                              "prints how many sockets each node closed")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--session", type=int, help="one session id")
    target.add_argument("--user", type=int, help="every session of this user")
    config.add_arguments(revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.from_sources(args)
    except ValueError as exc:
        print(f"osmium-gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level.upper() != "DEBUG":
        # websockets logs every connection open and close at INFO: a line per socket, which
        # at thousands of sockets drowns the gateway's own log.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    if args.verb == "migrate":
        from gateway.store.migrations import migrate_file

        applied = asyncio.run(migrate_file(settings.db))
        print(f"applied migrations: {applied or 'none (up to date)'}")
        return 0
    if args.verb == "sessions":
        from gateway import admin

        if args.action == "list":
            print(asyncio.run(admin.list_sessions(settings, args.user)))
        else:
            print(asyncio.run(admin.revoke(settings, session_id=args.session, user_id=args.user)))
        return 0
    from gateway.app import serve

    run = asyncio.run
    if settings.uvloop:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
    run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
