"""Email verification, password reset, password and email changes against a real gateway.

SECURITY.md C1-C4, P4, S5, E2, L2, L3, I4; PROTOCOL.md §4.11. Codes are read from the dev
outbox's in-memory messages (``gw.services.recovery.mailer``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.mail import Mail, Outbox
from gateway.proto import core_pb2
from tests.support.client import TestClient
from tests.support.flows import (
    STRONG,
    assert_clean_error,
    assert_empty_reply,
    authorization,
    client,
    clients,
    db_rows,
    eventually,
    gateway,
)
from tests.support.gateway import InProcessGateway

NEW = "a brand new passphrase"
# Every refused code addressed by email is this one 410: "wrong" would tell that a code is
# pending for the address, hence that it is registered (E2).
GONE = "invalid, expired or used code; request a new one"
CODE_RE = re.compile(r"\b(\d{8})\b")


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with gateway(tmp_path) as g:
        yield g


def outbox(gw: InProcessGateway) -> Outbox:
    mailer = gw.services.recovery.mailer
    assert isinstance(mailer, Outbox)
    return mailer


def mails(gw: InProcessGateway, to: str, subject: str) -> list[Mail]:
    return [m for m in outbox(gw).messages if m.to == to and subject in m.subject]


async def mailed_code(gw: InProcessGateway, to: str, subject: str, count: int = 1) -> str:
    """The code in the ``count``-th mail to ``to`` with ``subject``, once it has been sent."""
    found = await eventually(lambda: len(mails(gw, to, subject)) >= count and mails(gw, to, subject),
                             what=f"mail #{count} {subject!r} to {to}")
    match = CODE_RE.search(found[count - 1].body)
    assert match, found[count - 1]
    return match.group(1)


def verification_code(gw: InProcessGateway, to: str, count: int = 1) -> Any:
    return mailed_code(gw, to, "Confirm your email", count)


def reset_code(gw: InProcessGateway, to: str, count: int = 1) -> Any:
    return mailed_code(gw, to, "Reset your password", count)


def other(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** 8:08d}"


async def signed_up(c: TestClient, email: str, password: str = STRONG) -> Any:
    return authorization(await c.sign_up(name="someone", email=email, password=password))


async def verify(c: TestClient, email: str, code: str) -> core_pb2.RPCResult:
    return await c.call("auth_verify_email", email=email, code=code)


async def reset(c: TestClient, email: str, code: str | None = None,
                new_password: str = NEW) -> core_pb2.RPCResult:
    msg = c.message("auth_reset_password", email=email)
    if code is not None:
        msg.auth_reset_password.confirm.code = code
        msg.auth_reset_password.confirm.new_password = new_password
    return await c.request(msg)


async def resend(c: TestClient, email: str | None = None) -> core_pb2.RPCResult:
    msg = c.message("auth_resend_email_verification")
    if email is not None:
        msg.auth_resend_email_verification.email = email
    return await c.request(msg)


async def change_password(c: TestClient, current: str, new: str,
                          revoke: bool = False) -> core_pb2.RPCResult:
    return await c.call("settings_change_password", current_password=current, new_password=new,
                        revoke_sessions=revoke)


def confirmed(gw: InProcessGateway, email_norm: str) -> list[tuple[Any, ...]]:
    return db_rows(gw.services.settings.db,
                   "SELECT email_confirmed FROM users WHERE email_norm = ?", (email_norm,))


def wire(result: core_pb2.RPCResult) -> bytes:
    """The reply as bytes, without its req_id: what tells two answers apart."""
    copy = core_pb2.RPCResult()
    copy.CopyFrom(result)
    copy.req_id = 0
    return copy.SerializeToString()


# -- email verification -----------------------------------------------------------------------

async def test_sign_up_mails_a_code_that_confirms_the_email_once(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        await signed_up(c, "Ann@X.com")
        code = await verification_code(gw, "Ann@X.com")
        assert confirmed(gw, "ann@x.com") == [(0,)]
        assert assert_clean_error(await verify(c, "ann@x.com", other(code)), 410) == GONE
        assert_empty_reply(await verify(c, "ann@x.com", code))
        assert confirmed(gw, "ann@x.com") == [(1,)]
        assert assert_clean_error(await verify(c, "ann@x.com", code), 410) == GONE
        # An unknown address is indistinguishable from "no code".
        unknown = await verify(c, "nobody@x.com", code)
        assert assert_clean_error(unknown, 410) == GONE


async def test_codes_are_stored_only_as_keyed_hashes(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        await signed_up(c, "ann@x.com")
        code = await verification_code(gw, "ann@x.com")
        assert_empty_reply(await reset(c, "ann@x.com"))
        rcode = await reset_code(gw, "ann@x.com")
    rows = db_rows(gw.services.settings.db, "SELECT purpose, length(code_mac) FROM codes")
    assert sorted(rows) == [("reset", 32), ("verify", 32)]
    for part in Path(gw.services.settings.db).parent.glob("gateway.sqlite3*"):
        if part.is_file():
            data = part.read_bytes()
            assert code.encode() not in data and rcode.encode() not in data, part.name


async def test_resend_by_email_answers_alike_and_mails_only_unconfirmed(
        gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        await signed_up(c, "ann@x.com")
        first = await verification_code(gw, "ann@x.com")
        known = await resend(c, "ann@x.com")
        unknown = await resend(c, "nobody@x.com")
        assert_empty_reply(known)
        assert wire(known) == wire(unknown)  # E2
        second = await verification_code(gw, "ann@x.com", count=2)
        if first != second:  # the new code replaced the old one
            assert_clean_error(await verify(c, "ann@x.com", first), 410)
        assert_empty_reply(await verify(c, "ann@x.com", second))
        # Confirmed: still (), and no mail.
        assert wire(await resend(c, "ann@x.com")) == wire(unknown)
        # The worker sends in order: a marker mail after them proves nothing else was queued.
        assert_empty_reply(await reset(c, "ann@x.com"))
        await reset_code(gw, "ann@x.com")
    assert len(mails(gw, "ann@x.com", "Confirm your email")) == 2
    assert not [m for m in outbox(gw).messages if m.to == "nobody@x.com"]


async def test_resend_without_email_is_for_the_signed_in_caller(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (anon, ann, named):
        assert_clean_error(await resend(anon), 401)
        await signed_up(ann, "ann@x.com")
        await verification_code(gw, "ann@x.com")
        assert_empty_reply(await resend(ann))
        code = await verification_code(gw, "ann@x.com", count=2)
        assert_empty_reply(await verify(ann, "ann@x.com", code))
        assert_clean_error(await resend(ann), 409)  # already confirmed
        authorization(await named.sign_up(name="name only"))
        assert_clean_error(await resend(named), 412)  # no email to confirm


# -- password reset -----------------------------------------------------------------------------

async def test_completed_reset_ends_every_session_and_signs_no_one_in(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, stranger):
        token_a = (await signed_up(a, "ann@x.com")).token
        token_b = authorization(await b.sign_in("ann@x.com", STRONG)).token
        assert_empty_reply(await reset(stranger, "ann@x.com"))
        code = await reset_code(gw, "ann@x.com")
        assert_clean_error(await reset(stranger, "ann@x.com", other(code)), 410)
        done = await reset(stranger, "ann@x.com", code)
        assert_empty_reply(done)  # no authorization: nobody is signed in
        assert await a.closed() == (4001, "session revoked")
        assert await b.closed() == (4001, "session revoked")
        assert_clean_error(await stranger.call("auth_get_sessions"), 401)
        assert_clean_error(await stranger.authorize(token_a), 401)
        assert_clean_error(await stranger.authorize(token_b), 401)
        assert_clean_error(await stranger.sign_in("ann@x.com", STRONG), 401)
        assert_clean_error(await reset(stranger, "ann@x.com", code, "yet another one"), 410)
        authorization(await stranger.sign_in("ann@x.com", NEW))
    notice = await eventually(lambda: mails(gw, "ann@x.com", "password was changed"))
    assert CODE_RE.search(notice[0].body) is None
    assert db_rows(gw.services.settings.db, "SELECT count(*) FROM codes") == [(0,)]


async def test_reset_request_alone_changes_nothing(gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, other_client):
        token = (await signed_up(a, "ann@x.com")).token
        assert_empty_reply(await reset(other_client, "ann@x.com"))
        await reset_code(gw, "ann@x.com")
        authorization(await other_client.sign_in("ann@x.com", STRONG))
        authorization(await other_client.authorize(token))
        assert (await a.call("auth_get_sessions")).WhichOneof("result") == "sessions"


async def test_reset_request_answers_alike_for_unknown_and_known_emails(
        gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        await signed_up(c, "ann@x.com")
        known = await reset(c, "ann@x.com")
        unknown = await reset(c, "nobody@x.com")
        assert_empty_reply(known)
        assert wire(known) == wire(unknown)
        await reset_code(gw, "ann@x.com")
        # Name-only accounts have no password to reset: the same answer, and no mail.
    assert not [m for m in outbox(gw).messages if m.to == "nobody@x.com"]


async def test_a_wrong_code_for_a_registered_address_answers_like_an_unknown_address(
        gw: InProcessGateway) -> None:
    """Reset a known address (a code is now pending), then confirm with a wrong code; do the
    same for an unknown address: the replies are byte-identical, for reset and verification."""
    async with client(gw.url) as c:
        await signed_up(c, "ann@x.com")
        for request in (reset(c, "ann@x.com"), reset(c, "nobody@x.com"),
                        resend(c, "nobody@x.com")):
            assert_empty_reply(await request)
        code = await reset_code(gw, "ann@x.com")
        assert wire(await reset(c, "ann@x.com", other(code))) == wire(
            await reset(c, "nobody@x.com", other(code)))
        vcode = await verification_code(gw, "ann@x.com")
        assert wire(await verify(c, "ann@x.com", other(vcode))) == wire(
            await verify(c, "nobody@x.com", other(vcode)))


async def test_confirm_without_a_request_fails(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        await signed_up(c, "ann@x.com")
        verify_code = await verification_code(gw, "ann@x.com")
        no_request = await reset(c, "ann@x.com", "12345678")
        assert assert_clean_error(no_request, 410) == GONE
        # The verification code is for another purpose.
        assert_clean_error(await reset(c, "ann@x.com", verify_code), 410)
        unknown = await reset(c, "nobody@x.com", "12345678")
        assert wire(unknown) == wire(no_request)
        authorization(await c.sign_in("ann@x.com", STRONG))


async def test_reset_refuses_a_bad_new_password_and_keeps_the_code(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        await signed_up(c, "ann@x.com")
        assert_empty_reply(await reset(c, "ann@x.com"))
        code = await reset_code(gw, "ann@x.com")
        assert "at least 8" in assert_clean_error(await reset(c, "ann@x.com", code, "short"), 400)
        assert_empty_reply(await reset(c, "ann@x.com", code, NEW))


async def test_code_checks_are_throttled(tmp_path: Path) -> None:
    async with gateway(tmp_path, code_checks_hourly=3) as g, client(g.url) as c:
        await signed_up(c, "ann@x.com")
        code = await verification_code(g, "ann@x.com")
        for _ in range(3):
            assert_clean_error(await verify(c, "ann@x.com", other(code)), 410)
        message = assert_clean_error(await verify(c, "ann@x.com", code), 429)
        assert re.search(r"retry after \d+ s", message)
        assert confirmed(g, "ann@x.com") == [(0,)]


# -- settings.changePassword ------------------------------------------------------------------

async def test_change_password_needs_the_current_one(tmp_path: Path) -> None:
    async with gateway(tmp_path, signin_account_ip_failures=3) as g, clients(g.url, 2) as (a, b):
        await signed_up(a, "ann@x.com")
        token_b = authorization(await b.sign_in("ann@x.com", STRONG)).token
        assert_empty_reply(await reset(b, "ann@x.com"))
        rcode = await reset_code(g, "ann@x.com")
        wrong = await change_password(a, "not my password", NEW)
        assert assert_clean_error(wrong, 403) == "current password is wrong"
        assert_clean_error(await change_password(a, STRONG, "short"), 400)
        assert_empty_reply(await change_password(a, STRONG, NEW))
        # Without revoke_sessions the other session lives on.
        assert (await b.call("auth_get_sessions")).WhichOneof("result") == "sessions"
        assert_clean_error(await b.sign_in("ann@x.com", STRONG), 401)
        authorization(await b.sign_in("ann@x.com", NEW))
        authorization(await b.authorize(token_b))
        # Any password change voids outstanding reset codes (C3).
        assert_clean_error(await reset(b, "ann@x.com", rcode, "whatever it is"), 410)
        # Wrong current passwords count as sign-in failures: the third one in a row locks.
        for _ in range(3):
            assert_clean_error(await change_password(a, "wrong again", STRONG), 403)
        assert_clean_error(await change_password(a, NEW, STRONG), 429)
        assert_clean_error(await b.sign_in("ann@x.com", NEW), 429)
    assert mails(g, "ann@x.com", "password was changed")


async def test_change_password_with_revoke_ends_the_other_sessions(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        token_a = (await signed_up(a, "ann@x.com")).token
        token_b = authorization(await b.sign_in("ann@x.com", STRONG)).token
        assert_empty_reply(await change_password(a, STRONG, NEW, revoke=True))
        assert await b.closed() == (4001, "session revoked")
        assert_clean_error(await c.authorize(token_b), 401)
        sessions = await a.call("auth_get_sessions")
        assert [s.id for s in sessions.sessions.sessions] == [sessions.sessions.current]
        authorization(await c.authorize(token_a))


async def test_change_password_needs_a_password_account(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        authorization(await c.sign_up(name="name only"))
        assert_clean_error(await change_password(c, "anything", NEW), 412)


# -- settings.changeEmail ---------------------------------------------------------------------

async def test_change_email_to_a_taken_address_is_a_conflict(gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        await signed_up(a, "ann@x.com")
        await signed_up(b, "bob@x.com")
        assert_clean_error(await a.call("settings_change_email", new_email="BOB@x.com"), 409)
        authorization(await a.sign_in("ann@x.com", STRONG))


async def test_change_email_needs_a_new_confirmation(gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        await signed_up(a, "ann@x.com")
        old_code = await verification_code(gw, "ann@x.com")
        assert_empty_reply(await verify(a, "ann@x.com", old_code))
        assert_empty_reply(await a.call("settings_change_email", new_email="Ann@New.org"))
        assert confirmed(gw, "ann@new.org") == [(0,)]
        code = await verification_code(gw, "Ann@New.org")
        assert_empty_reply(await verify(b, "ann@new.org", code))
        assert confirmed(gw, "ann@new.org") == [(1,)]
        assert_clean_error(await b.sign_in("ann@x.com", STRONG), 401)
        authorization(await b.sign_in("ann@new.org", STRONG))
        # The old address is free again.
        await signed_up(b, "ann@x.com")


async def test_name_only_account_may_add_an_email(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        authorization(await c.sign_up(name="name only"))
        assert_empty_reply(await c.call("settings_change_email", new_email="late@x.com"))
        code = await verification_code(gw, "late@x.com")
        assert_empty_reply(await verify(c, "late@x.com", code))
        # Still no password: nothing to reset, nothing mailed.
        assert_empty_reply(await reset(c, "late@x.com"))
        assert_clean_error(await change_password(c, "anything", NEW), 412)
