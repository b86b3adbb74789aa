"""One frozen Settings object: every limit, timeout and secret of the gateway lives here.

Settings are read once, at start, from command-line flags and ``GATEWAY_*`` environment variables
(a flag wins over the variable, the variable over the default). Nothing else in the package reads
the environment. Each field's ``help`` is what ``osmium-gateway serve --help`` prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "GATEWAY_"


def _f(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"help": help, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    # -- network ----------------------------------------------------------------------------
    host: str = _f("127.0.0.1", "address to listen on")
    port: int = _f(8765, "TCP port to listen on (0 picks a free one)")
    backlog: int = _f(4096, "listen backlog; a reconnect storm needs thousands")
    node_id: int = _f(0, "this node's number, 0-1023: part of every snowflake id; unique per node")
    node_name: str = _f("", "this node's name in the registry (default: host name and pid)")
    entrypoints: tuple[str, ...] = _f(
        (), "entrypoints announced in Initialized, as HOST:PORT[:REGION] (repeatable; comma list in env)"
    )
    vapid_public_key: str | None = _f(None, "VAPID public key announced in Initialized")
    # -- storage ----------------------------------------------------------------------------
    db: str = _f("var/gateway.sqlite3", "SQLite database file")
    db_busy_timeout: float = _f(5.0, "seconds a write waits for the database lock before answering 503")
    redis_url: str | None = _f(None, "Redis URL for the multi-node registry and shared throttles")
    secret_key: str | None = _f(
        None,
        "server secret for password pepper and code HMACs; all nodes must share it "
        "(default: read or created in SECRET_FILE)",
        secret=True,
    )
    secret_file: str = _f("", "file holding the server secret when SECRET_KEY is unset (default: DB + '.secret')")
    # -- websocket transport ----------------------------------------------------------------
    max_message_bytes: int = _f(64 * 1024, "largest accepted frame; larger closes with 1009")
    compression: bool = _f(False, "enable permessage-deflate (the size cap applies after inflating)")
    ping_interval: float = _f(20.0, "seconds between server pings")
    ping_timeout: float = _f(20.0, "seconds to wait for a pong before closing")
    handshake_timeout: float = _f(10.0, "seconds allowed for the opening handshake")
    close_timeout: float = _f(5.0, "seconds to wait for the peer's close frame before dropping TCP")
    max_header_bytes: int = _f(8192, "largest accepted HTTP header line")
    max_headers: int = _f(64, "most HTTP headers accepted in the handshake")
    initialize_timeout: float = _f(10.0, "seconds a socket may stay open before core.initialize")
    unauthenticated_timeout: float = _f(600.0, "seconds an initialized socket may stay unauthenticated")
    origins: tuple[str, ...] = _f((), "allowed Origin values (empty: any); repeatable")
    allow_missing_origin: bool = _f(True, "accept handshakes without an Origin header (native apps)")
    send_queue_bytes: int = _f(1024 * 1024, "outgoing bytes buffered per socket before it is closed with 1013")
    max_inflight: int = _f(16, "requests one socket may have in progress; more answer 429")
    rate_limit_requests: int = _f(120, "requests per socket per RATE_LIMIT_WINDOW (token bucket)")
    rate_limit_window: float = _f(60.0, "seconds over which RATE_LIMIT_REQUESTS refill")
    rate_limit_burst: int = _f(60, "requests a socket may send at once before the rate applies")
    max_connections_per_ip: int = _f(512, "open sockets allowed per client IP (0: no cap)")
    max_connections: int = _f(19_900, "open sockets allowed on this node; more are refused with HTTP 503")
    # -- shutdown ---------------------------------------------------------------------------
    shutdown_deadline: float = _f(10.0, "seconds a graceful shutdown may take before sockets are dropped")
    shutdown_batch: int = _f(500, "sockets closed with 1012 per batch during shutdown")
    shutdown_batch_interval: float = _f(0.05, "seconds between shutdown batches")
    # -- accounts and sessions --------------------------------------------------------------
    bcrypt_cost: int = _f(12, "bcrypt work factor")
    hash_threads: int = _f(1, "threads hashing passwords (keep below the number of cores)")
    hash_queue: int = _f(256, "password hashes allowed to wait for a thread; more answer 503")
    password_min_chars: int = _f(8, "shortest password, in code points")
    password_max_chars: int = _f(1024, "longest password, in code points")
    name_max_chars: int = _f(64, "longest display name")
    session_idle_timeout: float = _f(90 * 86400.0, "seconds without activity after which a session ends")
    session_absolute_timeout: float = _f(0.0, "seconds after creation a session ends (0: never)")
    max_sessions_per_user: int = _f(100, "sessions per account; a new one revokes the oldest idle one")
    last_active_interval: float = _f(60.0, "seconds between last_active writes for an active socket")
    reauth_window: float = _f(
        600.0, "seconds after signing in during which a password account may change its email, "
        "enable TOTP or schedule its deletion; later, it must sign in again first")
    known_clients: tuple[str, ...] = _f(
        ("1=Osmium Web", "2=Osmium Desktop", "3=Osmium Android", "4=Osmium iOS"),
        "app names by client_id, as ID=NAME (repeatable)",
    )
    trusted_proxies: tuple[str, ...] = _f((), "proxy addresses or CIDRs whose forwarding headers are trusted")
    forwarded_for_header: str = _f("X-Forwarded-For", "client address header set by a trusted proxy")
    country_header: str = _f("", "country header set by a trusted proxy (e.g. CF-IPCountry)")
    region_header: str = _f("", "region header set by a trusted proxy")
    # -- throttles --------------------------------------------------------------------------
    signin_account_ip_failures: int = _f(10, "failed sign-ins per (account, IP) before a rising delay")
    signin_account_hourly_failures: int = _f(100, "failed sign-ins per account per hour")
    signin_ip_hourly_failures: int = _f(300, "failed sign-ins per IP per hour, across accounts")
    signup_ip_hourly: int = _f(30, "sign-ups per IP per hour")
    invite_lookup_ip_per_minute: int = _f(60, "invite lookups per IP per minute")
    code_checks_hourly: int = _f(20, "verification/reset/TOTP code checks per account or IP per hour")
    mails_hourly: int = _f(10, "mails sent per account or IP per hour")
    local_throttle_divisor: int = _f(4, "with Redis down, local throttles allow 1/N of the shared limits")
    # -- mail, codes and credential changes (services/recovery.py) ---------------------------
    mail_outbox: str = _f("", "directory the dev outbox writes mail to when SMTP_HOST is unset (default: DB + '.outbox')")
    smtp_host: str = _f("", "SMTP server for outgoing mail (empty: write mail to the dev outbox)")
    smtp_port: int = _f(587, "SMTP server port")
    smtp_username: str = _f("", "SMTP user name (empty: no login)")
    smtp_password: str = _f("", "SMTP password", secret=True)
    smtp_starttls: bool = _f(True, "upgrade the SMTP connection with STARTTLS")
    smtp_timeout: float = _f(30.0, "seconds one SMTP delivery may take")
    mail_from: str = _f("Osmium <no-reply@localhost>", "From address of outgoing mail")
    mail_queue: int = _f(1000, "mails waiting for the sender; more are dropped with a warning")
    code_ttl: float = _f(600.0, "seconds a verification or reset code lives (at most 600)")
    code_max_attempts: int = _f(5, "wrong tries that kill a code (1-5)")
    # -- account settings: TOTP, deletion (services/account.py) ------------------------------
    totp_enrol_timeout: float = _f(600.0, "seconds a started TOTP enrolment waits for its confirming code")
    account_delete_grace: float = _f(
        7 * 86400.0, "seconds between settings.deleteAccount and the deletion; cancellable meanwhile"
    )
    account_delete_interval: float = _f(60.0, "seconds between runs of the loop that deletes accounts past their grace")
    # -- invites, communities, groups, friends (services/social.py) --------------------------
    max_group_members: int = _f(50, "most participants in a group, its creator included")
    chat_name_max_chars: int = _f(100, "longest group or community name")
    invite_code_chars: int = _f(10, "length of a new invite code (URL-safe letters and digits)")
    max_invites_per_target: int = _f(100, "live invites one group, community or user may have at once")
    # -- registry ---------------------------------------------------------------------------
    recheck_interval: float = _f(30.0, "seconds between re-checks of live sockets against the store")
    registry_heartbeat: float = _f(5.0, "seconds between registry heartbeats to Redis")
    registry_ttl: float = _f(20.0, "seconds a node's registry entries live without a heartbeat")
    kick_ack_timeout: float = _f(5.0, "seconds the operator's revoke waits for nodes to acknowledge")
    # -- operations -------------------------------------------------------------------------
    log_level: str = _f("INFO", "log level: DEBUG, INFO, WARNING, ERROR")
    uvloop: bool = _f(True, "use uvloop when it is installed")

    def __post_init__(self) -> None:
        errors = []
        if not 0 <= self.node_id <= 1023:
            errors.append("node_id must be 0-1023")
        if self.max_message_bytes < 1024:
            errors.append("max_message_bytes must be at least 1024")
        if not 4 <= self.bcrypt_cost <= 31:
            errors.append("bcrypt_cost must be 4-31")
        if self.password_min_chars < 1 or self.password_max_chars < max(64, self.password_min_chars):
            errors.append("password limits must allow at least 64 characters")
        if self.hash_threads < 1 or self.max_inflight < 1:
            errors.append("hash_threads and max_inflight must be at least 1")
        if not 0 < self.code_ttl <= 600 or not 1 <= self.code_max_attempts <= 5:
            errors.append("code_ttl must be 1-600 s and code_max_attempts 1-5 (SECURITY.md C1)")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def app_names(self) -> Mapping[int, str]:
        out = {}
        for item in self.known_clients:
            key, _, name = item.partition("=")
            out[int(key)] = name
        return out

    def resolved_secret(self) -> bytes:
        """The server secret: configured, or read from (created in) the secret file."""
        if self.secret_key:
            return self.secret_key.encode()
        path = Path(self.secret_file or self.db + ".secret")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _kind(tp: Any) -> type:
    """The scalar type a field is parsed as (``str | None`` -> str, ``tuple[str, ...]`` -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _kind(args[0])
    if origin is tuple:
        return tuple
    return typing.cast(type, tp)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(Settings)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per Settings field, each documented with its variable and default."""
    kinds = _field_types()
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        shown = "(secret)" if f.metadata["secret"] else repr(f.default)
        help_text = f"{f.metadata['help']} [env {env}; default {shown}]"
        kind = kinds[f.name]
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif kind is tuple:
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def from_sources(args: argparse.Namespace | None = None,
                 environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from parsed flags, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    kinds = _field_types()
    values: dict[str, Any] = {}
    for name, kind in kinds.items():
        given = getattr(args, name, None) if args is not None else None
        if given is not None:
            values[name] = tuple(_split(given)) if kind is tuple else given
            continue
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        try:
            if kind is bool:
                values[name] = _parse_bool(raw)
            elif kind is tuple:
                values[name] = tuple(_split([raw]))
            else:
                values[name] = kind(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
    return Settings(**values)


def _split(items: Sequence[str]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]
