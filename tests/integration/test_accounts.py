"""Sign-up, sign-in and authorize against a real gateway, real sockets and a real SQLite file.

PROTOCOL.md §2-§4 (4.4, 4.5, 4.11); SECURITY.md T4, T6, P1, P3, L1, L3, L4, L5, E1, E3, E4, I3."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from gateway.services.tokens import parse_token
from tests.support.client import TestClient, error_code
from tests.support.flows import (
    RETRY_RE,
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

# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with gateway(tmp_path) as g:
        yield g


# -- sign-up --------------------------------------------------------------------------------------

async def test_sign_up_with_email_and_password_then_token_and_password_both_work(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        up = authorization(await a.sign_up("Ada  Lovelace", "Ada@Example.COM", STRONG))
        assert up.user.name == "Ada Lovelace"  # whitespace runs collapsed
        assert parse_token(up.token) is not None and parse_token(up.token)[0] == up.session_id

        again = authorization(await b.authorize(up.token))
        assert (again.token, again.session_id, again.user.id) == (up.token, up.session_id,
                                                                 up.user.id)
        # The email is case-folded: any case signs in to the same account.
        inn = authorization(await c.sign_in("ada@example.com", STRONG))
        assert inn.user.id == up.user.id

    rows = db_rows(gw.services.settings.db,
                   "SELECT email, email_norm, password_hash FROM users WHERE id = ?", (up.user.id,))
    assert len(rows) == 1
    email, norm, pw_hash = rows[0]
    assert (email, norm) == ("Ada@Example.COM", "ada@example.com")
    assert pw_hash and STRONG.encode() not in pw_hash and bytes(pw_hash).startswith(b"$2b$")
    # Only a hash of the token is stored (T2).
    stored = db_rows(gw.services.settings.db, "SELECT token_hash FROM sessions")
    assert all(up.token.split(".")[1].encode() not in bytes(r[0]) for r in stored)


async def test_name_only_sign_up_token_is_the_only_credential(gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        up = authorization(await a.sign_up("Nameless"))
        assert up.user.name == "Nameless"
        again = authorization(await b.authorize(up.token))
        assert again.user.id == up.user.id and again.session_id == up.session_id
        # Two name-only sign-ups with one name are two accounts (no email to collide on).
        other = authorization(await b.sign_up("Nameless"))
        assert other.user.id != up.user.id
    rows = db_rows(gw.services.settings.db,
                   "SELECT email, email_norm, password_hash FROM users WHERE id = ?", (up.user.id,))
    assert rows == [(None, None, None)]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": "x", "email": "x@example.com", "password": "short"}, "at least 8"),
        ({"name": "x", "email": "not-an-email", "password": STRONG}, "email"),
        ({"name": "x", "email": "x@nodot", "password": STRONG}, "email"),
        ({"name": "x", "email": "a b@example.com", "password": STRONG}, "email"),
        ({"name": "x", "email": "fine@example.com\u200b", "password": STRONG}, "email"),
        ({"name": "x", "email": "fine\x00@example.com", "password": STRONG}, "email"),
        ({"name": "   ", "email": "x@example.com", "password": STRONG}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "at most 64"),
        ({"name": "bad\x00name"}, "control"),
        ({"name": "x", "email": "x@example.com"}, "both"),
        ({"name": "x", "password": STRONG}, "both"),
        ({"name": "x", "email": "x@example.com", "password": "p" * 1025}, "at most 1024"),
    ],
)
async def test_sign_up_bad_input_answers_400_with_a_clear_message(
        gw: InProcessGateway, fields: dict[str, str], needle: str) -> None:
    async with client(gw.url) as c:
        res = await c.call("auth_sign_up", **fields)
        message = assert_clean_error(res, 400)
        assert needle in message, message
        # The socket is still usable and unauthenticated: a good sign-up then works.
        authorization(await c.sign_up("fine", "fine@example.com", STRONG))
    assert db_rows(gw.services.settings.db, "SELECT count(*) FROM users") == [(1,)]


async def test_taken_email_answers_409_and_creates_nothing(gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        authorization(await a.sign_up("first", "dup@example.com", STRONG))
        res = await b.sign_up("second", "DUP@example.com", "another password")
        assert "already" in assert_clean_error(res, 409)
        # The socket stays open and unauthenticated.
        assert error_code(await b.call("auth_get_sessions")) == 401
    assert db_rows(gw.services.settings.db, "SELECT count(*), count(DISTINCT email_norm) FROM users"
                   ) == [(1, 1)]


async def test_password_rules_length_not_bytes_and_nfkc(gw: InProcessGateway) -> None:
    """P1: long passphrases count in full (no 72-byte truncation); P3: NFKC before hashing."""
    long_a = "ä" * 60 + "A"  # 121 UTF-8 bytes, well past bcrypt's 72
    long_b = "ä" * 60 + "B"  # same first 72 bytes
    async with client(gw.url) as c:
        authorization(await c.sign_up("long", "long@example.com", long_a))
        authorization(await c.sign_up("lig", "lig@example.com", "\ufb01nancial plan"))  # "ﬁ"
    async with clients(gw.url, 3) as (x, y, z):
        authorization(await x.sign_in("long@example.com", long_a))
        assert_clean_error(await y.sign_in("long@example.com", long_b), 401)
        # NFKC: the ligature and its two plain letters are one password.
        authorization(await z.sign_in("lig@example.com", "financial plan"))
        # The minimum counts code points, not bytes: 7 two-byte letters are too few, 8 enough.
        assert "at least 8" in assert_clean_error(
            await x.call("auth_sign_up", name="n", email="cp@example.com", password="äääääää"), 400)
        authorization(await x.sign_up("n", "cp@example.com", "ääääääää"))


# -- sign-in --------------------------------------------------------------------------------------

async def test_each_sign_in_creates_a_new_session_and_token(gw: InProcessGateway) -> None:
    async with clients(gw.url, 4) as (a, b, c, d):
        up = authorization(await a.sign_up("multi", "multi@example.com", STRONG))
        one = authorization(await b.sign_in("multi@example.com", STRONG))
        two = authorization(await c.sign_in("MULTI@example.com", STRONG))
        tokens = {up.token, one.token, two.token}
        sessions = {up.session_id, one.session_id, two.session_id}
        assert len(tokens) == 3 and len(sessions) == 3
        assert {up.user.id, one.user.id, two.user.id} == {up.user.id}
        # Every token is live on its own.
        for auth in (up, one, two):
            again = authorization(await d.authorize(auth.token))
            assert again.session_id == auth.session_id
        listed = await d.call("auth_get_sessions")
        assert {s.id for s in listed.sessions.sessions} == sessions
    # A sign-in on a socket that is already signed in also makes a new session.
    async with client(gw.url) as e:
        first = authorization(await e.sign_in("multi@example.com", STRONG))
        second = authorization(await e.sign_in("multi@example.com", STRONG))
        assert first.session_id != second.session_id and first.token != second.token


async def test_sign_in_failure_is_one_answer_for_unknown_email_and_wrong_password(
        gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """E1 and §4.11: same code, same message, same bytes; both paths cost one bcrypt check."""
    checks: list[int] = []
    lock = threading.Lock()
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        with lock:
            checks.append(1)
        return real_checkpw(password, hashed)

    # The hasher calls bcrypt through the module attribute, in its own thread pool.
    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)
    async with clients(gw.url, 2) as (a, b):
        authorization(await a.sign_up("known", "known@example.com", STRONG))
        before = len(checks)
        wrong = await b.call("auth_sign_in", req_id=7, email="known@example.com",
                             password="wrong password")
        after_wrong = len(checks)
        unknown = await b.call("auth_sign_in", req_id=7, email="nobody@example.com",
                               password="wrong password")
        after_unknown = len(checks)
        malformed = await b.call("auth_sign_in", req_id=7, email="not an email",
                                 password="")
        after_malformed = len(checks)
        # An empty password is just a wrong one.
        empty_pw = await b.call("auth_sign_in", req_id=7, email="known@example.com", password="")

    assert_clean_error(wrong, 401)
    assert wrong.SerializeToString() == unknown.SerializeToString()
    assert wrong.SerializeToString() == malformed.SerializeToString()
    assert wrong.SerializeToString() == empty_pw.SerializeToString()
    assert after_wrong - before == 1, "a wrong password costs one bcrypt check"
    assert after_unknown - after_wrong == 1, "an unknown email still costs one bcrypt check"
    assert after_malformed - after_unknown == 1


async def test_sign_in_failures_take_at_least_one_real_hash(tmp_path: Path) -> None:
    """With a modest real cost, both failure paths spend at least one bcrypt's time (E1)."""
    cost = 10
    salt = bcrypt.gensalt(cost)
    one_hash = min(_timed(lambda: bcrypt.hashpw(b"x" * 64, salt)) for _ in range(2))
    async with gateway(tmp_path, bcrypt_cost=cost) as g, clients(g.url, 2) as (a, b):
        authorization(await a.sign_up("known", "known@example.com", STRONG))
        # Warm up: the dummy hash for unknown emails is made once at start-up.
        assert_clean_error(await b.sign_in("warm@example.com", STRONG), 401)
        for email in ("known@example.com", "nobody@example.com"):
            started = time.perf_counter()
            assert_clean_error(await b.sign_in(email, "wrong password"), 401)
            elapsed = time.perf_counter() - started
            assert elapsed >= 0.6 * one_hash, (email, elapsed, one_hash)


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def test_repeated_sign_in_failures_for_one_account_and_ip_answer_429(
        tmp_path: Path) -> None:
    """L1, L3: after the limit the (account, IP) pair is locked, right password included."""
    async with gateway(tmp_path, signin_account_ip_failures=3) as g, \
            clients(g.url, 2) as (a, b):
        authorization(await a.sign_up("target", "target@example.com", STRONG))
        for _ in range(3):
            assert_clean_error(await b.sign_in("Target@example.com", "guess guess"), 401)
        locked = await b.sign_in("target@example.com", "guess guess")
        match = RETRY_RE.search(assert_clean_error(locked, 429))
        assert match and int(match.group(1)) >= 1, locked
        # Locked means locked: the right password is refused too, with the same answer code.
        assert_clean_error(await b.sign_in("target@example.com", STRONG), 429)
        # Another account from the same IP is not affected.
        authorization(await a.sign_up("bystander", "by@example.com", STRONG))
        authorization(await b.sign_in("by@example.com", STRONG))
        # The lock ends by itself (no permanent lock-out): poll until the right password works.
        ok = await eventually(lambda: _signs_in(b, "target@example.com"), timeout=6,
                              interval=0.2, what="lock expiry")
        assert ok.user.name == "target"


async def _signs_in(c: TestClient, email: str) -> Any:
    res = await c.sign_in(email, STRONG)
    if res.WhichOneof("result") == "authorization":
        return res.authorization
    assert error_code(res) == 429, res
    return None


async def test_sign_in_failures_per_account_are_capped_across_ips(tmp_path: Path) -> None:
    """L1 per-account cap, with client IPs taken from a trusted proxy's header (L4)."""
    async with gateway(tmp_path, signin_account_hourly_failures=3,
                       trusted_proxies=("127.0.0.1",)) as g:
        async with client(g.url) as a:
            authorization(await a.sign_up("sprayed", "sprayed@example.com", STRONG))
        for i in range(3):
            async with client(g.url, additional_headers={"X-Forwarded-For": f"10.0.0.{i}"}) as c:
                assert_clean_error(await c.sign_in("sprayed@example.com", "nope nope"), 401)
        async with client(g.url, additional_headers={"X-Forwarded-For": "10.0.0.99"}) as c:
            assert RETRY_RE.search(assert_clean_error(
                await c.sign_in("sprayed@example.com", "nope nope"), 429))


async def test_sign_in_failures_per_ip_are_capped_across_accounts(tmp_path: Path) -> None:
    """L1 password spraying: one IP failing on many accounts is stopped, other IPs are not."""
    async with gateway(tmp_path, signin_ip_hourly_failures=3,
                       trusted_proxies=("127.0.0.1",)) as g:
        sprayer = {"X-Forwarded-For": "198.51.100.7"}
        async with client(g.url) as a:
            for i in range(4):
                authorization(await a.sign_up(f"v{i}", f"v{i}@example.com", STRONG))
        async with client(g.url, additional_headers=sprayer) as c:
            for i in range(3):
                assert_clean_error(await c.sign_in(f"v{i}@example.com", "Winter2024!"), 401)
            assert RETRY_RE.search(assert_clean_error(
                await c.sign_in("v3@example.com", "Winter2024!"), 429))
            # Even the right password of a fresh account is refused from that address...
            assert_clean_error(await c.sign_in("v3@example.com", STRONG), 429)
        # ...while the owner, elsewhere, signs in.
        async with client(g.url, additional_headers={"X-Forwarded-For": "192.0.2.1"}) as c:
            authorization(await c.sign_in("v3@example.com", STRONG))


async def test_sign_up_is_throttled_per_ip(tmp_path: Path) -> None:
    """L5: name-only (and email) sign-ups per IP; the 429 says when to retry."""
    async with gateway(tmp_path, signup_ip_hourly=2) as g, clients(g.url, 2) as (a, b):
        authorization(await a.sign_up("one"))
        authorization(await b.sign_up("two", "two@example.com", STRONG))
        res = await a.sign_up("three")
        match = RETRY_RE.search(assert_clean_error(res, 429))
        assert match and int(match.group(1)) > 60, "the window is an hour"
        # A fresh socket from the same address does not reset the count...
        async with client(g.url) as c:
            assert_clean_error(await c.sign_up("four"), 429)
        # ...nor does a forwarding header from a peer that is not a trusted proxy (L4).
        async with client(g.url, additional_headers={"X-Forwarded-For": "203.0.113.9"}) as c:
            assert_clean_error(await c.sign_up("five"), 429)
    assert db_rows(str(tmp_path / "gateway.sqlite3"), "SELECT count(*) FROM users") == [(2,)]


async def test_concurrent_mixed_case_sign_ups_make_exactly_one_account(
        gw: InProcessGateway) -> None:
    """I3: one account per normalised email; the losers get 409, never 500."""
    variants = ["A@x.com", "a@X.COM", "A@X.com", "a@x.com", "A@x.COM", "a@X.com", " a@x.com ",
                "Ａ@x.com", "a@ｘ.com", "A@X.CoM", "a@x.CoM", "A@x.cOm"]
    async with clients(gw.url, len(variants)) as cs:
        results = await asyncio.gather(*(
            c.sign_up(f"racer {i}", email, STRONG) for i, (c, email) in enumerate(zip(cs, variants, strict=True))
        ))
    kinds = [r.WhichOneof("result") for r in results]
    assert kinds.count("authorization") == 1, results
    for r in results:
        if r.WhichOneof("result") == "error":
            assert_clean_error(r, 409)
    rows = db_rows(gw.services.settings.db, "SELECT email_norm FROM users")
    assert rows == [("a@x.com",)]
    winner = next(r.authorization for r in results if r.WhichOneof("result") == "authorization")
    assert db_rows(gw.services.settings.db, "SELECT count(*) FROM sessions WHERE user_id = ?",
                   (winner.user.id,)) == [(1,)]


# -- authorize ------------------------------------------------------------------------------------

async def test_authorize_returns_the_same_token_session_and_current_user(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        up = authorization(await a.sign_up("Same", "same@example.com", STRONG))
        res = await b.authorize(up.token)
        auth = authorization(res)
        assert auth.token == up.token
        assert auth.session_id == up.session_id
        assert auth.user.id == up.user.id and auth.user.name == "Same"
        # Authorized now: an auth-only method works on this socket and names this session.
        listed = await b.call("auth_get_sessions")
        assert listed.sessions.current == up.session_id
        # Authorizing the same token again on the same socket is harmless.
        assert authorization(await b.authorize(up.token)).session_id == up.session_id


async def test_refused_tokens_answer_401_and_the_socket_stays_open(gw: InProcessGateway) -> None:
    """§4.4 and T6: malformed, unknown, wrong-secret and revoked tokens; then sign in."""
    async with clients(gw.url, 2) as (a, b):
        up = authorization(await a.sign_up("victim", "victim@example.com", STRONG))
        second = authorization(await a.sign_in("victim@example.com", STRONG))  # a is now `second`
        sid_hex, secret = up.token.split(".")
        flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
        revoked = up.token
        assert_empty_reply(await a.call("auth_revoke_sessions", session_ids=[up.session_id]))
        bad_tokens = [
            "",
            "abc",
            "x" * 200,  # longer than any token we issue
            up.token + "x",
            up.token.upper(),
            f"{sid_hex}.{flipped}",  # right session, wrong secret
            f"{(int(sid_hex, 16) + 1):016x}.{secret}",  # unknown session
            "ffffffffffffffff." + "A" * 43,
            "é" * 20,
            revoked,  # revoked
        ]
        for token in bad_tokens:
            assert_clean_error(await b.authorize(token), 401)
            # Still open and still unauthenticated after every refusal.
            assert error_code(await b.call("auth_get_sessions")) == 401
        # The same socket can sign in afterwards.
        inn = authorization(await b.sign_in("victim@example.com", STRONG))
        assert inn.user.id == up.user.id
        assert (await b.call("auth_get_sessions")).sessions.current == inn.session_id
        assert authorization(await b.authorize(second.token)).session_id == second.session_id


async def test_authorize_on_a_socket_bound_to_another_session_rebinds_it(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        one = authorization(await a.sign_up("one", "one@example.com", STRONG))
        two = authorization(await b.sign_up("two", "two@example.com", STRONG))
        switched = authorization(await a.authorize(two.token))
        assert switched.user.id == two.user.id
        listed = await a.call("auth_get_sessions")
        assert listed.sessions.current == two.session_id
        assert {s.id for s in listed.sessions.sessions} == {two.session_id}
        # Revoking `one` no longer touches socket a (it left that session).
        async with client(gw.url) as c:
            authorization(await c.authorize(one.token))
            assert_empty_reply(await c.call("auth_revoke_sessions", session_ids=[one.session_id]))
            assert await c.closed() == (4001, "session revoked")
        assert (await a.call("auth_get_sessions")).sessions.current == two.session_id


async def test_reconnect_after_the_socket_drops_authorizes_with_the_stored_token(
        gw: InProcessGateway) -> None:
    first = await TestClient.connect(gw.url)
    await first.initialize()
    up = authorization(await first.sign_up("roamer", "roamer@example.com", STRONG))
    # The network drops: no close handshake at all.
    first.ws.transport.abort()
    await eventually(lambda: not gw.services.registry.local_sockets(up.user.id),
                     what="server noticed the drop")
    async with client(gw.url) as again:
        auth = authorization(await again.authorize(up.token))
        assert (auth.token, auth.session_id, auth.user.id) == (up.token, up.session_id, up.user.id)
        assert (await again.call("auth_get_sessions")).sessions.current == up.session_id
    # A clean close and a second reconnect work the same way.
    async with client(gw.url) as third:
        assert authorization(await third.authorize(up.token)).session_id == up.session_id


async def test_internal_failures_answer_500_without_details(
        gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """E4: a bug in the store becomes "internal error"; the socket and server carry on."""
    async with clients(gw.url, 2) as (a, b):
        up = authorization(await a.sign_up("ok", "ok@example.com", STRONG))

        async def broken(*args: Any) -> Any:
            raise sqlite3.OperationalError("no such column: secret_sql_detail in /work/x.py")

        monkeypatch.setattr(gw.services.store, "user_by_email", broken)
        res = await b.sign_in("ok@example.com", STRONG)
        message = assert_clean_error(res, 500)
        assert "secret_sql_detail" not in message
        monkeypatch.undo()
        assert authorization(await b.authorize(up.token)).session_id == up.session_id


async def test_sign_ins_are_logged_with_who_where_and_how_but_no_secrets(
        gw: InProcessGateway, caplog: pytest.LogCaptureFixture) -> None:
    """E5: every sign-in success and failure is logged, without passwords, tokens or emails."""
    caplog.set_level(logging.INFO, logger="gateway.auth")
    async with client(gw.url) as c:
        up = authorization(await c.sign_up("logged", "Logged@Example.com", STRONG))
        await c.sign_in("logged@example.com", "wrong password!")
        await c.sign_in("nobody@example.com", "wrong password!")
        inn = authorization(await c.sign_in("logged@example.com", STRONG))
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.auth"]
    uid = up.user.id
    assert f"sign-in failed user={uid} ip=127.0.0.1 method=password" in lines
    assert "sign-in failed user=unknown ip=127.0.0.1 method=password" in lines
    assert any(line.startswith(f"sign-in ok user={uid} session={inn.session_id} ip=127.0.0.1")
               for line in lines)
    text = "\n".join(lines).lower()
    for secret in (STRONG, "wrong password!", up.token, inn.token, "logged@example.com",
                   "nobody@example.com"):
        assert secret.lower() not in text


async def test_throttled_sign_ins_are_logged_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """E5: an attempt refused by the throttle is still a sign-in attempt in the log."""
    caplog.set_level(logging.INFO, logger="gateway.auth")
    async with gateway(tmp_path, signin_account_ip_failures=1) as g, client(g.url) as c:
        await c.sign_up("t", "throttled@example.com", STRONG)
        await c.sign_in("throttled@example.com", "wrong password!")
        assert (await c.sign_in("throttled@example.com", STRONG)).error.error_code == 429
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.auth"]
    assert "sign-in throttled ip=127.0.0.1 method=password" in lines
