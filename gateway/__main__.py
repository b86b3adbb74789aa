"""Command line: ``osmium-gateway serve|migrate|sessions|loadtest ...`` (also ``python -m gateway``)."""

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
    loadtest = verbs.add_parser(
        "loadtest", help="drive a gateway with thousands of scripted sockets and report",
        description="Open SOCKETS scripted sockets over RAMP seconds; each initializes, "
                    "authenticates and sends Poisson-paced requests; after DURATION seconds "
                    "every socket stops and closes, and the report is printed. Exit status: "
                    "0 when it ran, 1 when no socket could connect, 2 for bad arguments.")
    _add_loadtest_arguments(loadtest)
    return parser


def _add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default="ws://127.0.0.1:8765", help="gateway to load [default %(default)s]")
    add("--sockets", type=int, default=100, metavar="N",
        help="scripted sockets, at most 20000 [default %(default)s]")
    add("--ramp", type=float, default=5.0, metavar="SECONDS",
        help="spread the connects evenly over this long [default %(default)s]")
    add("--duration", type=float, default=30.0, metavar="SECONDS",
        help="measured phase after the ramp; ramp + duration <= 3600 [default %(default)s]")
    add("--rate", type=float, default=1.0, metavar="R",
        help="requests per second per socket, Poisson-paced; 0: idle sockets that only send "
             "keepalives [default %(default)s]")
    add("--mix", default="sessions=1",
        help="weights of the request mix among sessions (auth.getSessions) and keepalive "
             "(the 08 01 frame), e.g. sessions=9,keepalive=1 [default %(default)s]")
    add("--auth", choices=("signup", "signin"), default="signup",
        help="signup: a name-only account per socket; signin: email+password accounts are "
             "created first, then every socket signs in [default %(default)s]")
    add("--accounts", type=int, default=0, metavar="N",
        help="accounts for --auth signin (0: one per 50 sockets) [default %(default)s]")
    add("--reconnect-every", type=float, default=0.0, metavar="SECONDS",
        help="each socket drops and reconnects (re-authorizing with its token) on average "
             "this often; 0: never [default %(default)s]")
    add("--keepalive", type=float, default=30.0, metavar="SECONDS",
        help="with --rate 0, seconds between keepalives [default %(default)s]")
    add("--json", metavar="FILE", help="also write the report as JSON to FILE")
    add("--seed", type=int, help="seed pacing, mix and reconnect choices (repeatable runs)")
    add("--uvloop", action=argparse.BooleanOptionalAction, default=True,
        help="use uvloop when it is installed [default %(default)s]")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "loadtest":
        from gateway.loadtest.runner import cli

        return cli(args)
    try:
        settings = config.from_sources(args)
    except ValueError as exc:
        print(f"osmium-gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs every connection open and close at INFO (a line per socket, which at
    # thousands of sockets drowns our own log) and, at DEBUG, the bytes of every frame: parts
    # of tokens and passwords. Neither is ever wanted.
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
