"""Account settings: the account view, TOTP two-factor sign-in, account deletion (docs/account.md).

TOTP is RFC 6238 through pyotp: 30 s steps, 6 digits, one step of drift either way. A code is
accepted for the *latest* matching step in that window, and only if that step is later than the
last one this account used, so a code that worked once cannot be replayed (SECURITY.md C1 spirit).
Backup codes come from ``secrets``, are stored as HMAC-SHA-256 with the server secret (C2) and
work once. Every code check made through ``settings.setupTotp`` is throttled per account and IP
(L2); a code given at sign-in is throttled as part of the sign-in (L1) and fails it with the one
sign-in answer (E1).

Deletion is deferred: ``settings.deleteAccount`` sets ``pending_delete_at`` and ends the other
sessions (S5); a background loop deletes accounts whose time has come and kicks their sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import pyotp

from gateway.config import Settings
from gateway.errors import Conflict, FailedPrecondition, InvalidArgument
from gateway.registry.base import Registry
from gateway.services.accounts import AccountService
from gateway.services.sessions import SessionService
from gateway.services.throttle import Throttles

if TYPE_CHECKING:
    from gateway.app import Services
    from gateway.store.account import DeletedAccount

log = logging.getLogger("gateway.account")

ISSUER = "Osmium"
STEP_SECONDS = 30
DIGITS = 6
VALID_WINDOW = 1  # steps of clock drift accepted either way
BACKUP_CODE_COUNT = 10
BACKUP_CODE_CHARS = 10
# No 0/o, 1/l/i: codes are read off paper. 31 symbols ** 10 is about 2 ** 49.
BACKUP_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
MAX_CODE_CHARS = 64
DELETE_BATCH = 100


# -- pure helpers (time is an argument) ----------------------------------------------------------

def normalize_code(raw: str) -> str:
    """Spaces and dashes dropped, letters lower-cased: ``"123 456"`` and ``"ABCD-EFGH-23"``
    are accepted as typed from an app or from paper."""
    if len(raw) > MAX_CODE_CHARS:
        return ""
    return "".join(raw.split()).replace("-", "").lower()


def is_totp_code(code: str) -> bool:
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def totp_step(secret: str, code: str, now_s: float) -> int | None:
    """The latest time step within the window whose code is ``code`` (pyotp's
    ``verify(valid_window=1)`` written out, because the replay guard needs the step)."""
    otp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int(now_s // STEP_SECONDS)
    for step in range(current + VALID_WINDOW, current - VALID_WINDOW - 1, -1):
        if step >= 0 and hmac.compare_digest(otp.generate_otp(step), code):
            return step
    return None


def provisioning_url(secret: str, label: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=label, issuer_name=ISSUER)


def new_backup_codes(count: int = BACKUP_CODE_COUNT) -> list[str]:
    return ["".join(secrets.choice(BACKUP_ALPHABET) for _ in range(BACKUP_CODE_CHARS))
            for _ in range(count)]


def backup_code_hash(key: bytes, user_id: int, code: str) -> bytes:
    return hmac.new(key, f"totp-backup:{user_id}:{code}".encode(), hashlib.sha256).digest()


# -- the service ---------------------------------------------------------------------------------

class AccountRepo(Protocol):
    """What this service needs of storage (``store/account.py`` implements it on SQLite)."""

    async def set_pending(self, user_id: int, secret: str, now: int) -> None: ...
    async def pending(self, user_id: int, created_after: int) -> str | None: ...
    async def drop_pending(self, user_id: int) -> None: ...
    async def enable(self, user_id: int, secret: str, code_hashes: Sequence[bytes],
                     step: int) -> bool: ...
    async def disable(self, user_id: int) -> None: ...
    async def accept_step(self, user_id: int, step: int) -> bool: ...
    async def use_backup_code(self, user_id: int, code_hash: bytes, now: int) -> bool: ...
    async def schedule_delete(self, user_id: int, at: int) -> None: ...
    async def cancel_delete(self, user_id: int) -> bool: ...
    async def delete_due(self, now: int, limit: int) -> list[DeletedAccount]: ...


INVALID_CODE = "invalid code"


class AccountSettingsService:
    def __init__(self, settings: Settings, repo: AccountRepo, accounts: AccountService,
                 sessions: SessionService, registry: Registry, throttles: Throttles,
                 clock_ms: Callable[[], int], code_key: bytes) -> None:
        self.settings = settings
        self.repo = repo
        self.accounts = accounts
        self.sessions = sessions
        self.registry = registry
        self.throttles = throttles
        self.clock_ms = clock_ms  # replaceable: tests move time by hand
        self._code_key = code_key
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._delete_loop(), name="account-delete")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- TOTP enrolment --------------------------------------------------------------------------
    async def start_totp(self, user_id: int) -> str:
        """Begin (or restart) an enrolment; returns the otpauth:// URL of the new secret."""
        user = await self.accounts.user(user_id)
        if user.totp_secret is not None:
            raise Conflict("two-factor sign-in is already enabled")
        if user.email is None or user.password_hash is None:
            raise FailedPrecondition("two-factor sign-in needs an account with email and password")
        secret = pyotp.random_base32()  # 160 bits from secrets
        await self.repo.set_pending(user_id, secret, self.clock_ms())
        return provisioning_url(secret, user.email)

    async def confirm_totp(self, user_id: int, raw_code: str, ip: str) -> list[str]:
        """Enable TOTP with the pending secret; returns the backup codes, in clear, this once."""
        user = await self.accounts.user(user_id)
        if user.totp_secret is not None:
            raise Conflict("two-factor sign-in is already enabled")
        now = self.clock_ms()
        timeout_ms = int(self.settings.totp_enrol_timeout * 1000)
        secret = await self.repo.pending(user_id, now - timeout_ms)
        if secret is None:
            raise FailedPrecondition("no TOTP enrolment in progress; start one first")
        await self.throttles.check_code(self._throttle_key(user_id), ip)
        code = normalize_code(raw_code)
        step = totp_step(secret, code, now / 1000) if is_totp_code(code) else None
        if step is None:
            log.info("totp enrolment: wrong code user=%d ip=%s", user_id, ip)
            raise InvalidArgument(INVALID_CODE)
        codes = new_backup_codes()
        hashes = [backup_code_hash(self._code_key, user_id, c) for c in codes]
        if not await self.repo.enable(user_id, secret, hashes, step):
            raise FailedPrecondition("the enrolment changed meanwhile; start again")
        log.info("totp enabled user=%d ip=%s", user_id, ip)
        return codes

    async def disable_totp(self, user_id: int, raw_code: str | None, ip: str) -> None:
        """Turn TOTP off with a current code or an unused backup code. Without TOTP enabled,
        this only drops an enrolment in progress (nothing to protect, so no code needed)."""
        user = await self.accounts.user(user_id)
        if user.totp_secret is None:
            await self.repo.drop_pending(user_id)
            return
        if raw_code is None:
            raise InvalidArgument("code: a current or backup code is needed to turn TOTP off")
        await self.throttles.check_code(self._throttle_key(user_id), ip)
        if not await self._use_code(user_id, user.totp_secret, raw_code):
            log.info("totp disable: wrong code user=%d ip=%s", user_id, ip)
            raise InvalidArgument(INVALID_CODE)
        await self.repo.disable(user_id)
        log.info("totp disabled user=%d ip=%s", user_id, ip)

    # -- TOTP use ----------------------------------------------------------------------------------
    async def check_sign_in_code(self, user_id: int, secret: str, raw_code: str | None) -> bool:
        """The sign-in hook of AccountService: a current TOTP code or an unused backup code,
        consumed by this call. The caller counts a False as a failed sign-in."""
        return raw_code is not None and await self._use_code(user_id, secret, raw_code)

    async def _use_code(self, user_id: int, secret: str, raw_code: str) -> bool:
        code = normalize_code(raw_code)
        if is_totp_code(code):
            step = totp_step(secret, code, self.clock_ms() / 1000)
            return step is not None and await self.repo.accept_step(user_id, step)
        if len(code) == BACKUP_CODE_CHARS:
            digest = backup_code_hash(self._code_key, user_id, code)
            return await self.repo.use_backup_code(user_id, digest, self.clock_ms())
        return False

    @staticmethod
    def _throttle_key(user_id: int) -> str:
        return f"user:{user_id}"

    # -- deletion ----------------------------------------------------------------------------------
    async def schedule_delete(self, user_id: int, current_session: int) -> None:
        """Delete the account after the grace period; end its other sessions now (S5)."""
        await self.accounts.user(user_id)
        at = self.clock_ms() + int(self.settings.account_delete_grace * 1000)
        await self.repo.schedule_delete(user_id, at)
        ended = await self.sessions.revoke_all(user_id, keep=current_session)
        log.info("account deletion scheduled user=%d at=%d ended_sessions=%d", user_id, at,
                 len(ended))

    async def cancel_delete(self, user_id: int) -> None:
        if not await self.repo.cancel_delete(user_id):
            raise FailedPrecondition("no account deletion is pending")
        log.info("account deletion cancelled user=%d", user_id)

    async def delete_due(self) -> int:
        """Delete every account whose grace has passed and kick its sockets; returns how many."""
        total = 0
        while True:
            batch = await self.repo.delete_due(self.clock_ms(), DELETE_BATCH)
            for gone in batch:
                self.sessions.forget(gone.user_id)
                if gone.session_ids:
                    await self.registry.revoke(gone.user_id, gone.session_ids)
                log.info("account deleted user=%d sessions=%d", gone.user_id,
                         len(gone.session_ids))
            total += len(batch)
            if len(batch) < DELETE_BATCH:
                return total

    async def _delete_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.account_delete_interval)
            try:
                await self.delete_due()
            except Exception:
                # A store or registry outage: the next round retries; sockets a lost kick
                # missed are closed by the sessions re-check (S3).
                log.warning("account deletion round failed; next in %.0f s",
                            self.settings.account_delete_interval, exc_info=True)


def build(services: Services) -> AccountSettingsService:
    from gateway.store.account import SqliteAccountRepo

    service = AccountSettingsService(
        services.settings, SqliteAccountRepo(services.db), services.accounts, services.sessions,
        services.registry, services.throttles, services.clock_ms,
        services.settings.resolved_secret())
    services.accounts.second_factor = service.check_sign_in_code
    return service
