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
    if args.verb == "migrate":
        from gateway.store.migrations import migrate_file

        applied = asyncio.run(migrate_file(settings.db))
        print(f"applied migrations: {applied or 'none (up to date)'}")
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
