"""Credentials lifecycle: email verification, password reset, password and email changes.

Rules (SECURITY.md C1-C4, P4, S5, E2, L2, I4; PROTOCOL.md §4.11); the flows are in
docs/recovery.md.

* Requests that name an email without signing in — reset request, resend — answer the same
  whether or not the address is registered (E2); the mail goes out only when it should.
* Code checks are throttled per account and IP (``check_code``), mail per account and IP
  (``check_mail``); both count unknown addresses the same way as known ones.
* A completed reset sets the password, consumes every code of the account and deletes all its
  sessions in one transaction (F3), then kicks the live sockets, mails a notice, and signs no
  one in (C3). A reset request alone changes nothing (C4).
* Mail goes through a bounded background queue, so no request waits for SMTP.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.config import Settings
from gateway.errors import Conflict, FailedPrecondition, Forbidden, Gone, InvalidArgument
from gateway.mail import Mailer, MailQueue, mailer_from_settings
from gateway.registry.base import Registry
from gateway.services.accounts import AccountService, normalize_email
from gateway.services.codes import CODE_REFUSED, CodeService, Purpose, Verdict, raise_for
from gateway.services.passwords import PasswordHasher, normalize_password
from gateway.services.sessions import SessionService
from gateway.services.throttle import Throttles
from gateway.store.base import EmailTaken, Store, StoreUnavailable, UserRecord
from gateway.store.codes import CodeStore

if TYPE_CHECKING:
    from gateway.app import Services

log = logging.getLogger("gateway.recovery")

CURRENT_PASSWORD_WRONG = "current password is wrong"


class RecoveryService:
    def __init__(self, settings: Settings, store: Store, codes: CodeService,
                 accounts: AccountService, sessions: SessionService, registry: Registry,
                 hasher: PasswordHasher, throttles: Throttles, mail: MailQueue) -> None:
        self.settings = settings
        self.store = store
        self.codes = codes
        self.accounts = accounts
        self.sessions = sessions
        self.registry = registry
        self.hasher = hasher
        self.throttles = throttles
        self.mail = mail

    @property
    def mailer(self) -> Mailer:
        """The mailer behind the queue (the Outbox in development and tests)."""
        return self.mail.mailer

    async def start(self) -> None:
        self.mail.start()

    async def stop(self) -> None:
        await self.mail.stop()

    # -- email verification --------------------------------------------------------------------
    async def after_sign_up(self, user: UserRecord) -> None:
        """Mail a verification code to a new account's address (sign-up is throttled itself).

        The account exists already: a database hiccup here must not turn a finished sign-up
        into an error, so it is logged and the user can ask for a new code.
        """
        if user.email is None:
            return
        try:
            await self._send_verification(user)
        except StoreUnavailable as exc:
            log.warning("sign-up user=%d: verification code not issued (%s)", user.id, exc)

    async def verify_email(self, email: str, code: str, ip: str) -> None:
        _, norm = normalize_email(email)
        await self.throttles.check_code(norm, ip)
        user = await self.store.user_by_email(norm)
        if user is None:
            raise Gone(CODE_REFUSED)  # the same answer as for a registered address
        verdict = await self.codes.store.confirm_email(
            user.id, norm, self.codes.mac(user.id, Purpose.VERIFY, code), self.codes.clock_ms(),
            self.codes.max_attempts)
        if verdict is not Verdict.OK:
            log.info("email verification refused user=%d ip=%s verdict=%s", user.id, ip,
                     verdict.value)
        raise_for(verdict, reveal_wrong=False)
        log.info("email confirmed user=%d ip=%s", user.id, ip)

    async def resend_verification(self, email: str, ip: str) -> None:
        """By address, signed in or not: the same answer whether or not it is registered."""
        _, norm = normalize_email(email)
        await self.throttles.check_mail(norm, ip)
        user = await self.store.user_by_email(norm)
        if user is not None and not user.email_confirmed:
            await self._send_verification(user)

    async def resend_own_verification(self, user_id: int, ip: str) -> None:
        """For the signed-in caller's own address: 412 without one, 409 when confirmed."""
        user = await self.accounts.user(user_id)
        if user.email is None or user.email_norm is None:
            raise FailedPrecondition("account has no email")
        if user.email_confirmed:
            raise Conflict("email already confirmed")
        await self.throttles.check_mail(user.email_norm, ip)
        await self._send_verification(user)

    async def _send_verification(self, user: UserRecord) -> None:
        assert user.email is not None
        code = await self.codes.issue(user.id, Purpose.VERIFY)
        self._mail_verification(user.email, code)
        log.info("verification code sent user=%d", user.id)

    def _mail_verification(self, to: str, code: str) -> None:
        self.mail.submit(to, "Confirm your email address",
                         f"Your Osmium verification code is {code}.\n\n"
                         f"It works once and expires in {self._ttl_text()}.\n"
                         "If you did not ask for it, ignore this mail.\n")

    # -- password reset ------------------------------------------------------------------------
    async def request_reset(self, email: str, ip: str) -> None:
        """Mail a reset code if the account exists and has a password; change nothing else."""
        _, norm = normalize_email(email)
        await self.throttles.check_mail(norm, ip)
        user = await self.store.user_by_email(norm)
        if user is None or user.password_hash is None or user.email is None:
            log.info("password reset requested for no resettable account ip=%s", ip)
            return
        code = await self.codes.issue(user.id, Purpose.RESET)
        self.mail.submit(user.email, "Reset your password",
                         f"Your Osmium password reset code is {code}.\n\n"
                         f"It works once and expires in {self._ttl_text()}.\n"
                         "If you did not ask for it, ignore this mail: your password stays "
                         "as it is.\n")
        log.info("password reset requested user=%d ip=%s", user.id, ip)

    async def confirm_reset(self, email: str, code: str, new_password: str, ip: str) -> None:
        _, norm = normalize_email(email)
        await self.throttles.check_code(norm, ip)
        user = await self.store.user_by_email(norm)
        if user is None or user.password_hash is None:
            raise Gone(CODE_REFUSED)  # the same answer as for a registered address
        mac = self.codes.mac(user.id, Purpose.RESET, code)
        # First judge the code without using it (a wrong try counts), so a wrong code costs no
        # bcrypt and a rejected new password leaves the code usable for a second attempt.
        await self.codes.check(user.id, Purpose.RESET, code, consume=False, reveal_wrong=False)
        s = self.settings
        clear = normalize_password(new_password, s.password_min_chars, s.password_max_chars)
        new_hash = await self.hasher.hash(clear)
        verdict, revoked = await self.codes.store.reset_password(
            user.id, mac, self.codes.clock_ms(), self.codes.max_attempts, new_hash)
        if verdict is not Verdict.OK:
            raise Gone(CODE_REFUSED)  # used or replaced while the new password was hashed
        await self._kick(user.id, revoked)
        log.info("password reset done user=%d ip=%s sessions_revoked=%d", user.id, ip,
                 len(revoked))
        if user.email is not None:
            self._mail_password_notice(user.email, "Every session of the account was signed out.")

    # -- settings ------------------------------------------------------------------------------
    async def change_password(self, user_id: int, session_id: int, current: str, new: str,
                              revoke_others: bool, ip: str) -> None:
        user = await self.accounts.user(user_id)
        if user.password_hash is None:
            raise FailedPrecondition("account has no password")
        s = self.settings
        clear = normalize_password(new, s.password_min_chars, s.password_max_chars)
        key = user.email_norm or f"user:{user.id}"
        await self.throttles.check_sign_in(key, ip)
        try:
            current_clear: str | None = normalize_password(current, 1, s.password_max_chars)
        except InvalidArgument:
            current_clear = None
        if current_clear is None or not await self.hasher.verify(current_clear,
                                                                 user.password_hash):
            await self.throttles.record_sign_in_failure(key, ip)
            log.info("password change refused: wrong current password user=%d ip=%s",
                     user.id, ip)
            raise Forbidden(CURRENT_PASSWORD_WRONG)
        new_hash = await self.hasher.hash(clear)
        revoked = await self.codes.store.change_password(
            user.id, user.password_hash, new_hash, session_id if revoke_others else None)
        if revoked is None:
            raise Conflict("password changed meanwhile; retry")
        await self._kick(user.id, revoked)
        log.info("password changed user=%d ip=%s sessions_revoked=%d", user.id, ip, len(revoked))
        if user.email is not None:
            self._mail_password_notice(
                user.email, "Your other sessions were signed out." if revoke_others else "")

    async def change_email(self, user_id: int, new_email: str, ip: str) -> None:
        typed, norm = normalize_email(new_email)
        user = await self.accounts.user(user_id)
        if norm == user.email_norm:
            if typed != user.email:  # the same address written differently
                await self.codes.store.set_typed_email(user.id, typed, norm)
            return
        await self.throttles.check_mail(norm, ip)
        issued = self.codes.new(user.id, Purpose.VERIFY)
        try:
            found = await self.codes.store.change_email(user.id, typed, norm, issued.mac,
                                                        issued.expires_at)
        except EmailTaken:
            log.info("email change refused: address taken user=%d ip=%s", user.id, ip)
            raise Conflict("email already registered") from None
        if not found:
            raise FailedPrecondition("account no longer exists")
        log.info("email changed user=%d ip=%s", user.id, ip)
        self._mail_verification(typed, issued.code)
        if user.email is not None:
            self.mail.submit(user.email, "Your email address was changed",
                             "The email address of your Osmium account was just changed.\n"
                             "If this was not you, sign in and change your password.\n")

    # -- helpers -------------------------------------------------------------------------------
    async def _kick(self, user_id: int, session_ids: list[int]) -> None:
        self.sessions.forget(user_id)
        if session_ids:
            await self.registry.revoke(user_id, session_ids)

    def _mail_password_notice(self, to: str, ended: str) -> None:
        self.mail.submit(to, "Your password was changed",
                         f"The password of your Osmium account was just changed. {ended}\n"
                         "If this was not you, reset your password now.\n")

    def _ttl_text(self) -> str:
        minutes = self.codes.ttl_ms // 60_000
        return f"{minutes} minutes" if minutes >= 1 else f"{self.codes.ttl_ms // 1000} seconds"


def build(services: Services) -> RecoveryService:
    s = services.settings
    codes = CodeService(CodeStore(services.db), s.resolved_secret(), s.code_ttl,
                        s.code_max_attempts, lambda: services.clock_ms())
    mail = MailQueue(mailer_from_settings(s), s.mail_queue)
    return RecoveryService(s, services.store, codes, services.accounts, services.sessions,
                           services.registry, services.hasher, services.throttles, mail)
