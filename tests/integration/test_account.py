"""Account settings against a real gateway, real sockets and a real SQLite file (docs/account.md).

settings.getAccount, settings.setupTotp with TOTP sign-in, settings.deleteAccount and the deletion
loop. SECURITY.md E1, L1, L2, L3, C1-C2, S2, S5. TOTP tests pin the account service's clock, so
codes computed here never straddle a 30 s step.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pyotp

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
    gateway,
)
from tests.support.gateway import InProcessGateway

EMAIL = "totp@example.com"
T0 = 1_700_000_010_000  # ms, 10 s into a 30 s step


class FrozenClock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def code(self, steps: int = 0) -> Any:
        """The code of the step ``steps`` away from now, for the secret set by ``enrol``."""
        return self.totp.at(self.ms / 1000 + 30 * steps)

    totp: pyotp.TOTP


def frozen(gw: InProcessGateway) -> FrozenClock:
    clock = FrozenClock()
    gw.services.account.clock_ms = clock
    return clock


def off_by_one(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def account(c: TestClient) -> Any:
    res = await c.call("settings_get_account")
    assert res.WhichOneof("result") == "account", res
    return res.account


async def setup_totp(c: TestClient, enabled: bool, code: str | None = None) -> core_pb2.RPCResult:
    fields: dict[str, Any] = {"enabled": enabled}
    if code is not None:
        fields["code"] = code
    return await c.call("settings_setup_totp", **fields)


async def sign_in(c: TestClient, totp: str | None = None, password: str = STRONG,
                  email: str = EMAIL) -> core_pb2.RPCResult:
    fields: dict[str, Any] = {"email": email, "password": password}
    if totp is not None:
        fields["totp"] = totp
    return await c.call("auth_sign_in", **fields)


async def enrol(c: TestClient, clock: FrozenClock) -> list[str]:
    """Start and confirm TOTP on the signed-in client; returns the backup codes."""
    started = await setup_totp(c, True)
    assert started.WhichOneof("result") == "totp", started
    assert not started.totp.enabled and not started.totp.backup_codes
    url = urllib.parse.urlparse(started.totp.url)
    assert (url.scheme, url.netloc) == ("otpauth", "totp")
    assert urllib.parse.unquote(url.path) == f"/Osmium:{EMAIL}"
    query = urllib.parse.parse_qs(url.query)
    assert query["issuer"] == ["Osmium"]
    clock.totp = pyotp.TOTP(query["secret"][0])
    done = await setup_totp(c, True, clock.code(-1))  # one step of drift is accepted
    assert done.WhichOneof("result") == "totp", done
    assert done.totp.enabled and not done.totp.url
    codes = [b.code for b in done.totp.backup_codes]
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(len(b.code) >= 10 and not b.used for b in done.totp.backup_codes)
    return codes


# -- settings.getAccount ----------------------------------------------------------------------------

async def test_get_account_for_email_and_name_only_accounts(tmp_path: Any) -> None:
    async with gateway(tmp_path) as gw, clients(gw.url, 2) as (a, b):
        authorization(await a.sign_up("Ada", "Ada@Example.com", STRONG))
        acc = await account(a)
        assert acc.HasField("email") and acc.email == "Ada@Example.com"
        assert (acc.confirmed, acc.has_password, acc.totp_enabled, acc.pending_delete) == (
            False, True, False, False)

        authorization(await b.sign_up("Nameless"))
        acc = await account(b)
        assert not acc.HasField("email")  # absent, not ""
        assert (acc.has_password, acc.totp_enabled, acc.pending_delete) == (False, False, False)
        # Name-only accounts cannot turn on two-factor sign-in: they have no sign-in to guard.
        assert_clean_error(await setup_totp(b, True), 412)

    async with gateway(tmp_path) as gw, client(gw.url) as c:
        assert_clean_error(await c.call("settings_get_account"), 401)  # needs auth


# -- TOTP -------------------------------------------------------------------------------------------

async def test_totp_enrolment_sign_in_backup_code_replay_and_disable(tmp_path: Any) -> None:
    async with gateway(tmp_path) as gw, clients(gw.url, 2) as (a, b):
        clock = frozen(gw)
        authorization(await a.sign_up("Tot", EMAIL, STRONG))
        # Confirming before starting: nothing pending.
        assert_clean_error(await setup_totp(a, True, "123456"), 412)
        # A restarted enrolment replaces the first secret: only the second one confirms.
        first = await setup_totp(a, True)
        first_secret = urllib.parse.parse_qs(urllib.parse.urlparse(first.totp.url).query)["secret"]
        backup = await enrol(a, clock)
        assert [clock.totp.secret] != first_secret
        assert (await account(a)).totp_enabled
        assert_clean_error(await setup_totp(a, True), 409)  # already enabled

        # Nothing about the codes is stored in clear.
        stored = db_rows(gw.services.settings.db, "SELECT code_hash FROM totp_backup_codes")
        assert len(stored) == 10 and all(c.encode() not in bytes(r[0]) for r in stored
                                         for c in backup)

        # Sign-in now needs the code: missing or wrong is the one sign-in failure (E1).
        wrong_password = await sign_in(b, clock.code(), password="wrong password!")
        missing = await sign_in(b)
        wrong = await sign_in(b, off_by_one(clock.code()))
        assert_clean_error(wrong_password, 401)
        for res in (missing, wrong):
            assert res.req_id != wrong_password.req_id
            assert res.error == wrong_password.error

        # The code used to enable (step -1) cannot sign in; the current one can, once.
        assert_clean_error(await sign_in(b, clock.code(-1)), 401)
        current = clock.code()
        authorization(await sign_in(b, current))
        assert (await sign_in(b, current)).error == wrong_password.error  # replay refused
        # A later step still works, while the clock moves on.
        clock.ms += 30_000
        authorization(await sign_in(b, clock.code()))

        # A backup code works once, whatever the case or grouping it is typed in.
        authorization(await sign_in(b, backup[0][:5].upper() + "-" + backup[0][5:]))
        assert (await sign_in(b, backup[0])).error == wrong_password.error

        # Turning it off needs a code: none, a wrong one, a used backup code are refused.
        assert_clean_error(await setup_totp(a, False), 400)
        assert_clean_error(await setup_totp(a, False, off_by_one(clock.code())), 400)
        assert_clean_error(await setup_totp(a, False, backup[0]), 400)
        off = await setup_totp(a, False, backup[1])
        assert off.WhichOneof("result") == "totp" and not off.totp.enabled
        assert not (await account(a)).totp_enabled
        assert db_rows(gw.services.settings.db, "SELECT count(*) FROM totp_backup_codes") == [(0,)]
        authorization(await sign_in(b))  # a password alone signs in again


async def test_code_checks_are_throttled_and_wrong_sign_in_codes_count_as_failures(
        tmp_path: Any) -> None:
    async with gateway(tmp_path, code_checks_hourly=3, signin_account_ip_failures=2) as gw, \
            clients(gw.url, 2) as (a, b):
        clock = frozen(gw)
        authorization(await a.sign_up("Tot", EMAIL, STRONG))
        await enrol(a, clock)  # code check 1
        assert_clean_error(await setup_totp(a, False, "abcdefghjk"), 400)  # 2
        assert_clean_error(await setup_totp(a, False, "abcdefghjk"), 400)  # 3
        msg = assert_clean_error(await setup_totp(a, False, clock.code()), 429)
        assert "retry after" in msg
        # Still enabled: the throttled request changed nothing.
        assert (await account(a)).totp_enabled

        # Wrong codes at sign-in are failed sign-ins: past the limit even the right one waits.
        assert_clean_error(await sign_in(b, "abcdefghjk"), 401)
        assert_clean_error(await sign_in(b, "abcdefghjk"), 401)
        assert_clean_error(await sign_in(b, clock.code()), 429)


# -- settings.deleteAccount -----------------------------------------------------------------------

async def test_delete_account_ends_other_sessions_and_can_be_cancelled(tmp_path: Any) -> None:
    async with gateway(tmp_path) as gw, clients(gw.url, 3) as (a, b, c):
        me = authorization(await a.sign_up("Del", EMAIL, STRONG))
        other = authorization(await sign_in(b))
        assert_clean_error(await a.call("settings_delete_account", cancel=True), 412)

        assert_empty_reply(await a.call("settings_delete_account"))
        # The other session is revoked the S2 way; the caller's stays.
        assert await b.closed() == (4001, "session revoked")
        kinds = [(u.update.WhichOneof("update"), u.update.session_deleted.session_id)
                 for u in b.updates]
        assert ("session_deleted", other.session_id) in kinds
        assert (await account(a)).pending_delete
        rows = db_rows(gw.services.settings.db, "SELECT id FROM sessions")
        assert rows == [(me.session_id,)]

        # While pending the owner can still sign in (to cancel), and the account is still there.
        authorization(await sign_in(c))
        assert (await account(c)).pending_delete
        assert_empty_reply(await c.call("settings_delete_account", cancel=True))
        assert not (await account(a)).pending_delete
        assert_clean_error(await a.call("settings_delete_account", cancel=True), 412)
        assert db_rows(gw.services.settings.db,
                       "SELECT pending_delete_at FROM users") == [(None,)]


async def test_account_is_deleted_after_the_grace_and_its_socket_kicked(tmp_path: Any) -> None:
    async with gateway(tmp_path, account_delete_grace=0.3,
                       account_delete_interval=0.05) as gw, clients(gw.url, 3) as (a, b, c):
        me = authorization(await a.sign_up("Del", EMAIL, STRONG))
        named = authorization(await b.sign_up("Nameless"))
        assert_empty_reply(await a.call("settings_delete_account"))
        assert (await account(a)).pending_delete
        assert await a.closed(timeout=10) == (4001, "session revoked")
        assert any(u.update.session_deleted.session_id == me.session_id for u in a.updates)

        assert_clean_error(await c.authorize(me.token), 401)
        assert_clean_error(await sign_in(c), 401)
        db = gw.services.settings.db
        assert db_rows(db, "SELECT id FROM users") == [(named.user.id,)]
        assert db_rows(db, "SELECT count(*) FROM sessions WHERE user_id = ?",
                       (me.user.id,)) == [(0,)]
        # An account nobody asked to delete stays.
        assert not (await account(b)).pending_delete
