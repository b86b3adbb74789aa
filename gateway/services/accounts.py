"""Accounts: sign-up and sign-in (PROTOCOL.md §4.5, §4.11; SECURITY.md P1-P3, L1, E1, E3, E5, I3).

Two kinds of account:

* **email + password**: the email is normalised (NFKC, case-folded) and unique by index, so
  ``A@x.com`` and ``a@X.COM`` are one account; a taken email answers 409 (a documented trade-off:
  sign-up reveals that an email is registered, sign-in and reset do not).
* **name only**: no email, no password. The session token is the account's only credential; losing
  every token loses the account. Sign-up is throttled per IP.

Every sign-in failure — unknown email, wrong password, wrong or missing TOTP — is the same 401
with the same message, and an unknown email still costs one bcrypt check.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.config import Settings
from gateway.errors import Conflict, InvalidArgument, RateLimited, Unauthenticated
from gateway.ids import SnowflakeGenerator
from gateway.services.passwords import PasswordHasher, normalize_password
from gateway.services.sessions import Device, SessionService
from gateway.services.throttle import Throttles
from gateway.store.base import EmailTaken, SessionRecord, Store, UserRecord

log = logging.getLogger("gateway.auth")

MAX_EMAIL_CHARS = 254
SIGN_IN_FAILED = "invalid email, password or code"
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs"})


_ADDRESS_SPECIALS = frozenset('<>()[]\\,;:"')


def normalize_email(raw: str) -> tuple[str, str]:
    """``(as typed, normalised)``; raises InvalidArgument for anything that is not an address."""
    typed = raw.strip()
    norm = unicodedata.normalize("NFKC", typed).casefold()
    local, at, domain = norm.rpartition("@")
    if (not at or not local or not domain or len(norm) > MAX_EMAIL_CHARS or "." not in domain
            or "@" in local or any(c.isspace() for c in norm)
            or domain.startswith(".") or domain.endswith(".")
            # A bare address only: display names, lists and comments ('"Bob" <a@b>', 'x,a@b')
            # would send mail to an address other than the one made unique.
            or any(c in _ADDRESS_SPECIALS for c in norm)
            # Control and invisible format characters (NUL, zero-width space, bidi overrides)
            # would make look-alike duplicates of an address, or break the mail it is sent.
            or any(unicodedata.category(c) in _INVISIBLE for c in norm)):
        raise InvalidArgument("email: not a valid address")
    return typed, norm


def normalize_name(raw: str, max_chars: int) -> str:
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not name:
        raise InvalidArgument("name: must not be empty")
    if len(name) > max_chars:
        raise InvalidArgument(f"name: at most {max_chars} characters")
    # U+200D (zero-width joiner) is a format character that emoji sequences need.
    if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") and c != "\u200d" for c in name):
        raise InvalidArgument("name: control characters are not allowed")
    return name


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str
    user: UserRecord
    session: SessionRecord


class AccountService:
    def __init__(self, settings: Settings, store: Store, sessions: SessionService,
                 hasher: PasswordHasher, throttles: Throttles, ids: SnowflakeGenerator,
                 clock_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.hasher = hasher
        self.throttles = throttles
        self.ids = ids
        self.clock_ms = clock_ms

    async def sign_up(self, email: str | None, password: str | None, name: str,
                      device: Device) -> SignedIn:
        s = self.settings
        clean_name = normalize_name(name, s.name_max_chars)
        if (email is None) != (password is None):
            raise InvalidArgument("give both email and password, or neither (name-only account)")
        typed = norm = None
        password_hash = None
        if email is not None and password is not None:
            typed, norm = normalize_email(email)
            clear = normalize_password(password, s.password_min_chars, s.password_max_chars)
        await self.throttles.check_sign_up(device.ip)
        if email is not None and password is not None:
            password_hash = await self.hasher.hash(clear)
        user = UserRecord(id=self.ids.next_id(), name=clean_name, created_at=self.clock_ms(),
                          email=typed, email_norm=norm, password_hash=password_hash)
        token, session = self.sessions.new_session(user.id, device)
        try:
            await self.store.create_user(user, session)
        except EmailTaken:
            log.info("sign-up refused: email taken ip=%s", device.ip)
            raise Conflict("email already registered") from None
        log.info("sign-up ok user=%d kind=%s ip=%s", user.id, "email" if norm else "name", device.ip)
        return SignedIn(token, user, session)

    async def sign_in(self, email: str, password: str, totp: str | None,
                      device: Device) -> SignedIn:
        try:
            _, norm = normalize_email(email)
        except InvalidArgument:
            norm = email.strip().casefold()[:MAX_EMAIL_CHARS]  # still throttled and still hashed
        try:
            await self.throttles.check_sign_in(norm, device.ip)
        except RateLimited:
            log.info("sign-in throttled ip=%s method=password", device.ip)  # E5: every attempt
            raise
        user = await self.store.user_by_email(norm)
        ok = False
        try:
            clear = normalize_password(password, 1, self.settings.password_max_chars)
        except InvalidArgument:
            clear = None
        if user is None or user.password_hash is None or clear is None:
            await self.hasher.verify_dummy(password[:64] or "-")
        else:
            ok = await self.hasher.verify(clear, user.password_hash)
            if ok and user.totp_secret is not None:
                ok = await self._totp_ok(user.id, user.totp_secret, totp)
        if not ok or user is None:
            await self.throttles.record_sign_in_failure(norm, device.ip)
            # Who (a user id, never the typed email), from where, how; never the password.
            log.info("sign-in failed user=%s ip=%s method=password%s",
                     user.id if user is not None else "unknown", device.ip,
                     "+totp" if totp is not None else "")
            raise Unauthenticated(SIGN_IN_FAILED)
        await self.throttles.record_sign_in_success(norm, device.ip)
        token, session = await self.sessions.create(user.id, device)
        log.info("sign-in ok user=%d session=%d ip=%s method=password%s", user.id, session.id,
                 device.ip, "+totp" if user.totp_secret is not None else "")
        return SignedIn(token, user, session)

    #: The TOTP / backup-code check, installed by services/account.py (which owns that state):
    #: ``(user_id, secret, code) -> accepted``, consuming what it accepts. Unset, it refuses.
    second_factor: Callable[[int, str, str | None], Awaitable[bool]] | None = None

    async def _totp_ok(self, user_id: int, secret: str, code: str | None) -> bool:
        check = self.second_factor
        return check is not None and await check(user_id, secret, code)

    async def user(self, user_id: int) -> UserRecord:
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise Unauthenticated("account no longer exists")
        return user
