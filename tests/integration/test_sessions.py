"""Sessions against a real gateway: listing, device refresh, revocation, the cap, idle expiry.

PROTOCOL.md §4.5, §4.7, §4.8, §4.10; SECURITY.md S1, S2, S4, S6, T6.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.proto import auth_pb2
from tests.support.client import TestClient, error_code
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


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with gateway(tmp_path) as g:
        yield g


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def next_ms() -> None:
    """Let the millisecond clock tick, so last_active values of successive steps differ."""
    start = now_ms()
    await eventually(lambda: now_ms() > start, interval=0.001, what="clock tick")


async def sessions_of(c: TestClient) -> auth_pb2.Sessions:
    res = await c.call("auth_get_sessions")
    assert res.WhichOneof("result") == "sessions", res
    return res.sessions


def by_id(listed: auth_pb2.Sessions) -> dict[int, auth_pb2.Session]:
    return {s.id: s for s in listed.sessions}


async def session_deleted(c: TestClient, timeout: float = 5.0) -> int:
    """The next update must be session_deleted; returns its session id."""
    msg = await c.next_update(timeout)
    assert msg.update.WhichOneof("update") == "session_deleted", msg
    return msg.update.session_deleted.session_id


# -- auth.getSessions ------------------------------------------------------------------------------

async def test_get_sessions_lists_own_sessions_with_device_fields_and_current(
        gw: InProcessGateway) -> None:
    started = now_ms()
    async with clients(gw.url, 3, init=False) as (a, b, other):
        await a.initialize(client_id=1, device_type="linux", device_version="6.1",
                           app_version="1.0.0")
        await b.initialize(client_id=3, device_type="android", device_version="14",
                           app_version="2.5.1")
        await other.initialize(client_id=99, device_type="toaster", device_version="0",
                               app_version="9")
        up = authorization(await a.sign_up("lister", "lister@example.com", STRONG))
        inn = authorization(await b.sign_in("lister@example.com", STRONG))
        stranger = authorization(await other.sign_up("stranger"))

        seen_a = await sessions_of(a)
        seen_b = await sessions_of(b)
        assert seen_a.current == up.session_id and seen_b.current == inn.session_id
        assert set(by_id(seen_a)) == set(by_id(seen_b)) == {up.session_id, inn.session_id}
        s_a, s_b = by_id(seen_a)[up.session_id], by_id(seen_a)[inn.session_id]
        assert (s_a.client_id, s_a.device_type, s_a.device_version, s_a.app_version,
                s_a.app_name) == (1, "linux", "6.1", "1.0.0", "Osmium Web")
        assert (s_b.client_id, s_b.device_type, s_b.device_version, s_b.app_version,
                s_b.app_name) == (3, "android", "14", "2.5.1", "Osmium Android")
        for s in (s_a, s_b):
            # Unix milliseconds (§4.8), not seconds or a snowflake.
            assert started - 1000 <= s.last_active <= now_ms() + 1000, s.last_active
            # No trusted proxy configured: no geo at all (§4.10).
            assert not s.HasField("country") and not s.HasField("region")
        # An unknown client id has no app name; another user's sessions are not listed.
        seen_other = await sessions_of(other)
        assert [s.id for s in seen_other.sessions] == [stranger.session_id]
        assert seen_other.sessions[0].app_name == ""
        assert seen_other.sessions[0].client_id == 99


async def test_get_sessions_needs_auth(gw: InProcessGateway) -> None:
    async with client(gw.url) as c:
        assert_clean_error(await c.call("auth_get_sessions"), 401)
        assert_clean_error(await c.call("auth_revoke_sessions", session_ids=[1]), 401)


async def test_known_clients_setting_names_apps(tmp_path: Path) -> None:
    async with gateway(tmp_path, known_clients=("7=Osmium Fridge",)) as g, \
            client(g.url, init=False) as c:
        await c.initialize(client_id=7)
        authorization(await c.sign_up("fridge"))
        assert (await sessions_of(c)).sessions[0].app_name == "Osmium Fridge"


async def test_country_and_region_come_from_trusted_proxy_headers_only(tmp_path: Path) -> None:
    geo = {"X-Country": "DE", "X-Region": "BE"}
    async with gateway(tmp_path, trusted_proxies=("127.0.0.1",), country_header="X-Country",
                       region_header="X-Region") as g:
        async with client(g.url, additional_headers=geo) as c:
            authorization(await c.sign_up("berliner"))
            s = (await sessions_of(c)).sessions[0]
            assert (s.country, s.region) == ("DE", "BE")
        async with client(g.url) as c:  # same trusted proxy, no headers: absent, not ""
            authorization(await c.sign_up("nowhere"))
            s = (await sessions_of(c)).sessions[0]
            assert not s.HasField("country") and not s.HasField("region")
    # The same headers from a peer that is not a trusted proxy are ignored.
    async with gateway(tmp_path / "untrusted", country_header="X-Country",
                       region_header="X-Region") as g, \
            client(g.url, additional_headers=geo) as c:
        authorization(await c.sign_up("spoofer"))
        s = (await sessions_of(c)).sessions[0]
        assert not s.HasField("country") and not s.HasField("region")
    async with gateway(tmp_path / "other-proxy", trusted_proxies=("10.0.0.0/8",),
                       country_header="X-Country", region_header="X-Region") as g, \
            client(g.url, additional_headers=geo) as c:
        authorization(await c.sign_up("spoofer"))
        s = (await sessions_of(c)).sessions[0]
        assert not s.HasField("country") and not s.HasField("region")


async def test_authorize_refreshes_last_active_and_device_fields(gw: InProcessGateway) -> None:
    """§4.5: seen from another connection once the batched write has landed."""
    async with clients(gw.url, 2, init=False) as (a, watcher):
        await a.initialize(client_id=1, device_type="linux", device_version="6.1",
                           app_version="1.0.0")
        await watcher.initialize(client_id=2, device_type="windows", device_version="11",
                                 app_version="3.0.0")
        up = authorization(await a.sign_up("mover", "mover@example.com", STRONG))
        authorization(await watcher.sign_in("mover@example.com", STRONG))
        before = by_id(await sessions_of(watcher))[up.session_id]
        assert before.device_type == "linux"

    async with client(gw.url, init=False) as b:
        await b.initialize(client_id=4, device_type="ios", device_version="17.2",
                           app_version="4.1.0")
        authorized_at = now_ms()
        assert authorization(await b.authorize(up.token)).session_id == up.session_id

        async with client(gw.url) as w2:
            authorization(await w2.sign_in("mover@example.com", STRONG))

            async def refreshed() -> auth_pb2.Session | None:
                s = by_id(await sessions_of(w2)).get(up.session_id)
                return s if s is not None and s.device_type == "ios" else None

            after = await eventually(refreshed, timeout=6, interval=0.1, what="device refresh")
        assert (after.client_id, after.device_type, after.device_version, after.app_version,
                after.app_name) == (4, "ios", "17.2", "4.1.0", "Osmium iOS")
        assert after.last_active >= authorized_at - 5
        assert after.last_active > before.last_active
    row = db_rows(gw.services.settings.db,
                  "SELECT device_type, last_active FROM sessions WHERE id = ?", (up.session_id,))
    assert row[0][0] == "ios" and row[0][1] >= authorized_at - 5


# -- auth.revokeSessions ---------------------------------------------------------------------------

async def test_revoking_another_device_kicks_it_and_tells_the_others(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        dev_a = authorization(await a.sign_up("two devices", "two@example.com", STRONG))
        dev_b = authorization(await b.sign_in("two@example.com", STRONG))
        dev_c = authorization(await c.sign_in("two@example.com", STRONG))

        assert_empty_reply(await a.call("auth_revoke_sessions", session_ids=[dev_b.session_id]))

        # B: session_deleted for itself, then close 4001 "session revoked".
        assert await session_deleted(b) == dev_b.session_id
        assert await b.closed() == (4001, "session revoked")
        # A (the caller) and C (a bystander) hear about it so their lists refresh; both stay open.
        assert await session_deleted(a) == dev_b.session_id
        assert await session_deleted(c) == dev_b.session_id
        assert set(by_id(await sessions_of(a))) == {dev_a.session_id, dev_c.session_id}
        assert (await sessions_of(c)).current == dev_c.session_id

        # B's token is dead from now on; the others are not.
        async with client(gw.url) as d:
            assert_clean_error(await d.authorize(dev_b.token), 401)
            assert authorization(await d.authorize(dev_c.token)).session_id == dev_c.session_id
    assert db_rows(gw.services.settings.db, "SELECT count(*) FROM sessions WHERE id = ?",
                   (dev_b.session_id,)) == [(0,)]


async def test_revoking_a_session_of_another_user_answers_404_and_revokes_nothing(
        gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (mine, mine2, theirs):
        me = authorization(await mine.sign_up("me", "me@example.com", STRONG))
        me2 = authorization(await mine2.sign_in("me@example.com", STRONG))
        them = authorization(await theirs.sign_up("them", "them@example.com", STRONG))

        for ids in ([them.session_id], [me2.session_id, them.session_id],
                    [me.session_id, me2.session_id, them.session_id],
                    [me2.session_id, me2.session_id + 1], [2**64 - 1], [2**63]):
            res = await mine.call("auth_revoke_sessions", session_ids=ids)
            assert_clean_error(res, 404)

        # Nothing happened to anyone: no updates, no closes, every token still good.
        for c in (mine, mine2, theirs):
            assert not c.updates
        assert set(by_id(await sessions_of(mine))) == {me.session_id, me2.session_id}
        assert [s.id for s in (await sessions_of(theirs)).sessions] == [them.session_id]
        async with client(gw.url) as check:
            for auth in (me, me2, them):
                assert authorization(await check.authorize(auth.token)).session_id == \
                    auth.session_id
    assert db_rows(gw.services.settings.db, "SELECT count(*) FROM sessions") == [(3,)]


async def test_revoking_the_current_session_is_a_sign_out(gw: InProcessGateway) -> None:
    async with clients(gw.url, 2) as (a, b):
        up = authorization(await a.sign_up("leaver", "leaver@example.com", STRONG))
        other = authorization(await b.sign_in("leaver@example.com", STRONG))
        msg = a.message("auth_revoke_sessions", session_ids=[up.session_id])
        await a.send(msg.SerializeToString())
        # The reply () arrives, then the close; the reply is not lost to the close.
        res = await a.result(msg.id)
        assert_empty_reply(res)
        assert res.req_id == msg.id
        assert await a.closed() == (4001, "session revoked")
        assert await session_deleted(b) == up.session_id
        async with client(gw.url) as c:
            assert_clean_error(await c.authorize(up.token), 401)
            assert authorization(await c.authorize(other.token)).session_id == other.session_id


async def test_revoking_several_own_sessions_at_once(gw: InProcessGateway) -> None:
    async with clients(gw.url, 3) as (a, b, c):
        authorization(await a.sign_up("many", "many@example.com", STRONG))
        sb = authorization(await b.sign_in("many@example.com", STRONG))
        sc = authorization(await c.sign_in("many@example.com", STRONG))
        ids = [sb.session_id, sc.session_id, sb.session_id]  # duplicates are harmless
        assert_empty_reply(await a.call("auth_revoke_sessions", session_ids=ids))
        for kicked in (b, c):
            assert await kicked.closed() == (4001, "session revoked")
        got = {await session_deleted(a), await session_deleted(a)}
        assert got == {sb.session_id, sc.session_id}
        # Revoking them again: they are gone, so 404.
        assert_clean_error(await a.call("auth_revoke_sessions", session_ids=[sb.session_id]), 404)


async def test_revoke_with_an_empty_list_answers_400(gw: InProcessGateway) -> None:
    async with client(gw.url) as a:
        authorization(await a.sign_up("empty"))
        assert_clean_error(await a.call("auth_revoke_sessions", session_ids=[]), 400)
        assert (await sessions_of(a)).sessions  # still signed in


# -- the session cap ---------------------------------------------------------------------------------

async def test_sign_in_past_the_cap_revokes_the_oldest_idle_session(tmp_path: Path) -> None:
    """S6: with max 3, the 4th sign-in evicts the least recently active session."""
    async with gateway(tmp_path, max_sessions_per_user=3) as g, clients(g.url, 5) as cs:
        a, b, c, d, e = cs
        first = authorization(await a.sign_up("capped", "capped@example.com", STRONG))
        second = authorization(await b.sign_in("capped@example.com", STRONG))
        third = authorization(await c.sign_in("capped@example.com", STRONG))
        # Use `second`, then `first` again: `third`, though the newest, is now the idlest.
        for auth in (second, first):
            await next_ms()
            authorization(await e.authorize(auth.token))
        await g.services.sessions.flush()  # the batched last_active write, now
        await next_ms()
        fourth = authorization(await d.sign_in("capped@example.com", STRONG))

        assert await session_deleted(c) == third.session_id
        assert await c.closed() == (4001, "session revoked")
        listed = await sessions_of(d)
        assert set(by_id(listed)) == {first.session_id, second.session_id, fourth.session_id}
        async with client(g.url) as x:
            assert_clean_error(await x.authorize(third.token), 401)
            for auth in (first, second, fourth):
                assert authorization(await x.authorize(auth.token)).session_id == auth.session_id
    assert db_rows(str(tmp_path / "gateway.sqlite3"), "SELECT count(*) FROM sessions") == [(3,)]


async def test_cap_evicts_a_disconnected_session_too(tmp_path: Path) -> None:
    async with gateway(tmp_path, max_sessions_per_user=2) as g:
        async with client(g.url) as a:
            first = authorization(await a.sign_up("capped2", "capped2@example.com", STRONG))
        async with clients(g.url, 2) as (b, c):
            authorization(await b.sign_in("capped2@example.com", STRONG))
            authorization(await c.sign_in("capped2@example.com", STRONG))
            assert await session_deleted(b) == first.session_id
            async with client(g.url) as x:
                assert_clean_error(await x.authorize(first.token), 401)
            assert len((await sessions_of(c)).sessions) == 2


# -- idle lifetime ------------------------------------------------------------------------------------

async def test_a_token_idle_past_the_timeout_answers_401(tmp_path: Path) -> None:
    """S1: enforced on authorize, against the session's stored last_active."""
    idle = 1.0
    async with gateway(tmp_path, session_idle_timeout=idle) as g:
        async with client(g.url) as a:
            up = authorization(await a.sign_up("sleeper"))
        async with client(g.url) as b:
            # Used within the timeout: fine (and this refreshes it).
            assert authorization(await b.authorize(up.token)).session_id == up.session_id
        await eventually(lambda: not g.server.connections, what="sockets closed")
        await g.services.sessions.flush()
        record = await g.services.store.session_by_id(up.session_id)
        assert record is not None
        # Wait (by the wall clock the service uses) until the stored last_active is too old.
        await eventually(lambda: now_ms() > record.last_active + idle * 1000 + 50,
                         timeout=idle + 3, interval=0.05, what="idle timeout passed")
        async with client(g.url) as c:
            res = await c.authorize(up.token)
            assert_clean_error(res, 401)
            # The socket stays open and can sign up / in.
            authorization(await c.sign_up("again"))
        # The expired session is gone from the store, not only refused.
        assert await g.services.store.session_by_id(up.session_id) is None


async def test_idle_expiry_hides_sessions_from_the_list(tmp_path: Path) -> None:
    idle = 1.0
    async with gateway(tmp_path, session_idle_timeout=idle) as g:
        async with client(g.url) as a:
            old = authorization(await a.sign_up("lister", "idle@example.com", STRONG))
        await eventually(lambda: not g.server.connections, what="sockets closed")
        await g.services.sessions.flush()
        record = await g.services.store.session_by_id(old.session_id)
        assert record is not None
        await eventually(lambda: now_ms() > record.last_active + idle * 1000 + 50,
                         timeout=idle + 3, what="idle timeout passed")
        async with client(g.url) as b:
            new = authorization(await b.sign_in("idle@example.com", STRONG))
            assert [s.id for s in (await sessions_of(b)).sessions] == [new.session_id]


# -- last_active while connected -------------------------------------------------------------------

async def test_last_active_follows_activity_in_batches_and_is_written_at_disconnect(
        tmp_path: Path) -> None:
    """An active socket's session is refreshed every last_active_interval; an idle one's is
    not, until it disconnects (then it is written once more)."""
    async with gateway(tmp_path, last_active_interval=0.5) as g:
        db = g.services.settings.db

        def last_active(session_id: int) -> int:
            rows = db_rows(db, "SELECT last_active FROM sessions WHERE id = ?", (session_id,))
            return int(rows[0][0])

        async with client(g.url) as busy, client(g.url) as idle:
            busy_id = authorization(await busy.sign_up("busy", "busy@example.com", STRONG)).session_id
            idle_id = authorization(await idle.sign_up("idle", "idle@example.com", STRONG)).session_id

            async def busy_refreshed_after(mark: int) -> bool:
                await sessions_of(busy)  # activity on the busy socket only
                return last_active(busy_id) > mark

            # The first sweep also writes the idle socket: its sign-up was activity.
            first = last_active(busy_id)
            await eventually(lambda: busy_refreshed_after(first), timeout=10, interval=0.1,
                             what="the active session's last_active to advance")
            idle_start = last_active(idle_id)
            second = last_active(busy_id)
            await eventually(lambda: busy_refreshed_after(second), timeout=10, interval=0.1,
                             what="the active session's last_active to advance again")
            assert last_active(idle_id) == idle_start  # no activity since, no write
        await eventually(lambda: last_active(idle_id) > idle_start, timeout=5,
                         what="last_active written at disconnect")


async def test_sign_in_in_flight_when_its_socket_is_revoked_leaves_no_session_behind(
        tmp_path: Path) -> None:
    """A socket whose session is revoked while it signs in again gets 401 for that sign-in
    (never 500), then 4001, and the session the sign-in made is revoked with it."""
    async with gateway(tmp_path, bcrypt_cost=12) as g, clients(g.url, 2) as (a, b):
        first = authorization(await a.sign_up("racer", "racer@example.com", STRONG))
        authorization(await b.sign_in("racer@example.com", STRONG))
        slow = a.message("auth_sign_in", email="racer@example.com", password=STRONG)
        await a.send(slow.SerializeToString())  # ~250 ms of bcrypt on the server
        assert_empty_reply(await b.call("auth_revoke_sessions", session_ids=[first.session_id]))
        res = await a.result(slow.id)
        assert_clean_error(res, 401)
        assert (await a.closed())[0] == 4001
        owned = db_rows(g.services.settings.db, "SELECT count(*) FROM sessions s JOIN users u"
                        " ON u.id = s.user_id WHERE u.email_norm = 'racer@example.com'")
        assert owned == [(1,)]  # b's session only
        assert g.server.metrics.authorized._value.get() == 1  # b


async def test_authorize_racing_a_revocation_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A revocation that commits after authorize checked the token but before the socket was
    registered finds no socket to kick; authorize must notice and refuse (S2)."""
    async with gateway(tmp_path) as g, clients(g.url, 2) as (a, b):
        up = authorization(await a.sign_up("raced"))
        await a.close()
        registry = g.services.registry
        real_bind = registry.bind

        async def bind_after_a_revocation(sock: Any) -> None:
            # Another node revokes now: the store forgets the session, no socket is here yet.
            await g.services.store.revoke_sessions(sock.user_id, [sock.session_id])
            await real_bind(sock)

        monkeypatch.setattr(registry, "bind", bind_after_a_revocation)
        assert_clean_error(await b.authorize(up.token), 401)
        monkeypatch.undo()
        assert registry.local_sockets(up.user.id) == []
        assert error_code(await b.call("auth_get_sessions")) == 401  # b stayed unauthenticated


async def test_requests_sent_while_a_revoked_socket_winds_down_still_get_answers(
        tmp_path: Path) -> None:
    """A revoked socket stays open until its request in progress is answered; whatever it
    sends meanwhile is answered too (401), never dropped: the real client would wait forever."""
    async with gateway(tmp_path, bcrypt_cost=12) as g, clients(g.url, 2) as (a, b):
        first = authorization(await a.sign_up("winding", "winding@example.com", STRONG))
        authorization(await b.sign_in("winding@example.com", STRONG))
        slow = a.message("settings_change_password", current_password="wrong password!",
                         new_password="another good one")
        await a.send(slow.SerializeToString())  # ~250 ms of bcrypt on the server
        assert_empty_reply(await b.call("auth_revoke_sessions", session_ids=[first.session_id]))
        late = a.message("auth_get_sessions")
        await a.send(late.SerializeToString())
        assert assert_clean_error(await a.result(late.id), 401) == "session revoked"
        assert error_code(await a.result(slow.id)) == 403
        assert (await a.closed())[0] == 4001


async def test_a_refused_authorize_leaves_an_authorized_socket_unauthenticated(
        gw: InProcessGateway) -> None:
    """PROTOCOL.md §4.4: a refused authorize answers 401 and the connection stays open and
    unauthenticated, also when it was authorized before."""
    async with client(gw.url) as c:
        up = authorization(await c.sign_up("switcher"))
        assert_clean_error(await c.authorize("0000000000000001." + "A" * 43), 401)
        assert error_code(await c.call("auth_get_sessions")) == 401
        assert gw.services.registry.local_sockets(up.user.id) == []
        assert authorization(await c.authorize(up.token)).session_id == up.session_id
