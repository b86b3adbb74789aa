"""SqliteStore against real SQLite files: the Store contract, locking, and crash consistency."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gateway.errors import NotFound
from gateway.store.base import (
    EmailTaken,
    SessionRecord,
    SessionTouch,
    StoreUnavailable,
    UserRecord,
)
from gateway.store.migrations import MIGRATIONS, migrate_file
from gateway.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]


def make_user(user_id: int, email_norm: str | None = None, created_at: int = 1_000) -> UserRecord:
    email_norm = email_norm if email_norm is not None else f"user{user_id}@example.com"
    return UserRecord(
        id=user_id,
        name=f"user {user_id}",
        created_at=created_at,
        email=email_norm.upper(),
        email_norm=email_norm,
        password_hash=b"$2b$12$" + bytes([user_id % 256]) * 53,
        email_confirmed=True,
        totp_secret="JBSWY3DPEHPK3PXP",
        pending_delete_at=None,
    )


def make_session(
    session_id: int, user_id: int, last_active: int = 1_000, created_at: int = 1_000
) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        user_id=user_id,
        token_hash=session_id.to_bytes(32, "big"),
        created_at=created_at,
        last_active=last_active,
        client_id=7,
        device_type="ios",
        device_version="17.4",
        app_version="1.2.3",
        country="DE",
        region="BE",
    )


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, standing for another process or an operator's shell."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gateway.sqlite3"  # "data/" does not exist: open() creates it


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(db_path))
    await s.open()
    yield s
    await s.close()


# -- schema and pragmas ------------------------------------------------------------------------
async def test_migrations_are_recorded_and_applied_once(tmp_path: Path, db_path: Path) -> None:
    latest = [version for version, _ in MIGRATIONS]
    assert await migrate_file(str(tmp_path / "cli.sqlite3")) == latest
    assert await migrate_file(str(tmp_path / "cli.sqlite3")) == []

    for _ in range(2):
        s = SqliteStore(str(db_path))
        await s.open()
        await s.close()
    assert await migrate_file(str(db_path)) == []
    with raw(db_path) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == latest


async def test_journal_mode_is_wal(store: SqliteStore, db_path: Path) -> None:
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_writer_enforces_foreign_keys(store: SqliteStore) -> None:
    # A session for a user that does not (or no longer) exists: refused as 404, not a 500.
    with pytest.raises(NotFound, match="no longer exists"):
        await store.create_session(make_session(1, user_id=404), max_sessions=10)
    assert await store.session_by_id(1) is None


# -- users -------------------------------------------------------------------------------------
async def test_user_round_trip_by_id_and_email(store: SqliteStore) -> None:
    big_id = (1 << 63) - 1  # the largest snowflake fits SQLite's signed 64-bit INTEGER
    user = make_user(big_id, "ada@example.com")
    await store.create_user(user, None)

    assert await store.user_by_id(big_id) == user
    assert await store.user_by_email("ada@example.com") == user
    assert await store.user_by_id(1) is None
    assert await store.user_by_email("nobody@example.com") is None


async def test_name_only_users_may_share_a_null_email(store: SqliteStore) -> None:
    for user_id in (1, 2):
        user = UserRecord(id=user_id, name="anon", created_at=5)
        await store.create_user(user, None)
        assert await store.user_by_id(user_id) == user


async def test_concurrent_signups_with_one_email_make_one_user(db_path: Path) -> None:
    # Two stores on one file, like two gateway processes: the unique index decides, not a lock.
    first, second = SqliteStore(str(db_path)), SqliteStore(str(db_path))
    await first.open()
    await second.open()
    try:
        results = await asyncio.gather(
            *(
                (first if i % 2 else second).create_user(
                    make_user(i, "same@example.com"), make_session(100 + i, i)
                )
                for i in range(1, 21)
            ),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results, start=1) if r is None]
        assert len(winners) == 1
        assert sum(isinstance(r, EmailTaken) for r in results) == 19
        winner = await first.user_by_email("same@example.com")
        assert winner is not None and winner.id == winners[0]
        # The losers' sessions were rolled back with their users.
        assert await first.existing_sessions(range(101, 121)) == {100 + winners[0]}
    finally:
        await first.close()
        await second.close()


async def test_create_user_with_first_session(store: SqliteStore) -> None:
    session = make_session(10, user_id=1)
    await store.create_user(make_user(1), session)
    assert await store.session_by_id(10) == session
    assert await store.sessions_of_user(1) == [session]
    assert await store.session_by_id(11) is None


# -- sessions ----------------------------------------------------------------------------------
async def test_session_cap_evicts_oldest_idle_and_never_the_new_one(store: SqliteStore) -> None:
    await store.create_user(make_user(1), None)
    await store.create_user(make_user(2), make_session(20, 2, last_active=1))
    for session_id, last_active in ((10, 100), (11, 300), (12, 200)):
        assert await store.create_session(make_session(session_id, 1, last_active), 3) == []

    # The new session is the least recently active of all, and still survives.
    assert await store.create_session(make_session(13, 1, last_active=50), 3) == [10]
    assert {s.id for s in await store.sessions_of_user(1)} == {11, 12, 13}

    assert await store.create_session(make_session(14, 1, last_active=60), 1) == [11, 12, 13]
    assert [s.id for s in await store.sessions_of_user(1)] == [14]
    assert await store.existing_sessions([20]) == {20}  # another user's are not counted


async def test_revoke_sessions_is_all_or_nothing(store: SqliteStore) -> None:
    await store.create_user(make_user(1), make_session(10, 1))
    await store.create_session(make_session(11, 1), 10)
    await store.create_user(make_user(2), make_session(20, 2))

    assert await store.revoke_sessions(1, [10, 20]) is False
    assert await store.revoke_sessions(1, [10, 999]) is False
    assert await store.existing_sessions([10, 11, 20]) == {10, 11, 20}

    assert await store.revoke_sessions(1, []) is True
    assert await store.revoke_sessions(1, [10, 11, 10]) is True
    assert await store.existing_sessions([10, 11, 20]) == {20}


async def test_revoke_user_sessions_keeps_one(store: SqliteStore) -> None:
    await store.create_user(make_user(1), make_session(10, 1))
    for session_id in (11, 12):
        await store.create_session(make_session(session_id, 1), 10)
    await store.create_user(make_user(2), make_session(20, 2))

    assert await store.revoke_user_sessions(1, keep=11) == [10, 12]
    assert await store.existing_sessions([10, 11, 12, 20]) == {11, 20}
    assert await store.revoke_user_sessions(1) == [11]
    assert await store.existing_sessions([11, 20]) == {20}


async def test_touch_sessions_never_goes_back_and_sets_device_only_when_asked(
    store: SqliteStore,
) -> None:
    await store.create_user(make_user(1), make_session(10, 1, last_active=1_000))
    await store.create_session(make_session(11, 1, last_active=1_000), 10)
    await store.touch_sessions(
        [
            SessionTouch(10, 1_500, device_type="ignored"),
            SessionTouch(10, 900),  # an older batch landing late
            SessionTouch(
                11,
                2_000,
                device=True,
                client_id=9,
                device_type="android",
                device_version="14",
                app_version="2.0.0",
                country="FR",
                region=None,
            ),
            SessionTouch(999, 5_000, device=True),  # gone meanwhile: ignored
        ]
    )
    s10, s11 = await store.session_by_id(10), await store.session_by_id(11)
    assert s10 == make_session(10, 1, last_active=1_500)
    assert s11 is not None
    assert (s11.last_active, s11.client_id, s11.device_type, s11.device_version) == (
        2_000,
        9,
        "android",
        "14",
    )
    assert (s11.app_version, s11.country, s11.region) == ("2.0.0", "FR", None)

    await store.touch_sessions([SessionTouch(11, 1_200, device=True, device_type="web")])
    s11 = await store.session_by_id(11)
    assert s11 is not None and (s11.last_active, s11.device_type) == (2_000, "web")
    await store.touch_sessions([])


async def test_delete_expired_sessions_by_idle_and_absolute_age(store: SqliteStore) -> None:
    await store.create_user(make_user(1), make_session(10, 1, last_active=100, created_at=50))
    await store.create_session(make_session(11, 1, last_active=500, created_at=50), 10)
    await store.create_session(make_session(12, 1, last_active=500, created_at=400), 10)
    await store.create_user(make_user(2), make_session(20, 2, last_active=90, created_at=10))

    assert await store.delete_expired_sessions(idle_before=200, created_before=None) == [
        (10, 1),
        (20, 2),
    ]
    assert await store.delete_expired_sessions(idle_before=200, created_before=100) == [(11, 1)]
    assert await store.existing_sessions([10, 11, 12, 20]) == {12}


async def test_existing_sessions(store: SqliteStore) -> None:
    await store.create_user(make_user(1), make_session(10, 1))
    await store.create_session(make_session(11, 1), 10)
    assert await store.existing_sessions([10, 11, 12]) == {10, 11}
    assert await store.existing_sessions([]) == set()


async def test_deleting_a_user_cascades_to_its_sessions(store: SqliteStore, db_path: Path) -> None:
    await store.create_user(make_user(1), make_session(10, 1))
    await store.create_session(make_session(11, 1), 10)
    await store.create_user(make_user(2), make_session(20, 2))
    with raw(db_path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM users WHERE id = 1")
    assert await store.existing_sessions([10, 11, 20]) == {20}
    assert await store.sessions_of_user(1) == []


# -- failures ----------------------------------------------------------------------------------
async def test_write_lock_held_past_busy_timeout_is_unavailable(db_path: Path) -> None:
    s = SqliteStore(str(db_path), busy_timeout_ms=50)
    await s.open()
    try:
        await s.create_user(make_user(1), None)
        with raw(db_path) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable):
                await s.create_user(make_user(2), make_session(20, 2))
            with pytest.raises(StoreUnavailable):
                await s.touch_sessions([SessionTouch(20, 5)])
            assert await s.user_by_id(1) is not None  # WAL: readers do not wait for writers
            other.execute("ROLLBACK")
        await s.create_user(make_user(2), make_session(20, 2))  # the writer recovered
        assert await s.existing_sessions([20]) == {20}
    finally:
        await s.close()


async def test_write_cancelled_while_waiting_for_the_lock_leaves_no_transaction(
    db_path: Path,
) -> None:
    s = SqliteStore(str(db_path), busy_timeout_ms=5_000)
    await s.open()
    try:
        with raw(db_path) as other:
            other.execute("BEGIN IMMEDIATE")
            signup = asyncio.create_task(s.create_user(make_user(1), None))
            # Give BEGIN time to reach SQLite's busy wait. Were the cancel to land earlier, the
            # test would pass without testing anything, never fail spuriously.
            await asyncio.sleep(0.05)
            signup.cancel()
            other.execute("ROLLBACK")  # the abandoned BEGIN now succeeds in aiosqlite's thread
            with pytest.raises(asyncio.CancelledError):
                await signup
            await s.create_user(make_user(2), None)  # and was rolled back: the writer is free
            other.execute("BEGIN IMMEDIATE")  # nor does the store keep the file locked
            other.execute("ROLLBACK")
        assert await s.user_by_id(1) is None
    finally:
        await s.close()


async def test_closed_store_is_unavailable(db_path: Path) -> None:
    s = SqliteStore(str(db_path))
    with pytest.raises(StoreUnavailable):
        await s.user_by_id(1)
    await s.open()
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.user_by_id(1)
    with pytest.raises(StoreUnavailable):
        await s.create_user(make_user(1), None)


SIGNUP_WORKERS = 8
_SIGNUP_LOOP = f"""
import asyncio, itertools, sys
from tests.integration.test_store_sqlite import make_session, make_user
from gateway.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    await store.open()
    ids = itertools.count(1)

    async def worker() -> None:
        while True:
            i = next(ids)
            await store.create_user(make_user(i), make_session(1_000_000 + i, i))
            print(i, flush=True)  # acknowledged: this sign-up has committed

    print("ready", flush=True)
    await asyncio.gather(*(worker() for _ in range({SIGNUP_WORKERS})))

asyncio.run(main())
"""


async def test_sigkill_during_signups_leaves_the_database_consistent(db_path: Path) -> None:
    # Several sign-ups in flight at once, so the kill lands inside some of them.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SIGNUP_LOOP,
        str(db_path),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: set[int] = set()
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"
        # Kill once a good number have committed, with the workers mid-write.
        while len(acked) < 200:
            acked.add(int(await asyncio.wait_for(proc.stdout.readline(), 10)))
    finally:
        proc.kill()
        await proc.wait()
    rest = await proc.stdout.read()
    acked |= {int(line) for line in rest.split(b"\n")[:-1]}  # a cut-off last line: no ack

    with raw(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orphans = conn.execute(
            "SELECT count(*) FROM sessions s LEFT JOIN users u ON u.id = s.user_id"
            " WHERE u.id IS NULL"
        ).fetchone()[0]
        assert orphans == 0
        sessionless = conn.execute(
            "SELECT count(*) FROM users u LEFT JOIN sessions s ON s.user_id = u.id"
            " WHERE s.id IS NULL"
        ).fetchone()[0]
        assert sessionless == 0  # a user exists if and only if its whole sign-up committed
        present = {row[0] for row in conn.execute("SELECT id FROM users")}
    # Every acknowledged sign-up survived; only those in flight may have committed unacked.
    assert acked <= present
    assert len(present - acked) <= SIGNUP_WORKERS

    s = SqliteStore(str(db_path))
    await s.open()
    try:
        for user_id in present:  # every row complete, exactly as written
            assert await s.user_by_id(user_id) == make_user(user_id)
            assert await s.sessions_of_user(user_id) == [make_session(1_000_000 + user_id, user_id)]
    finally:
        await s.close()


async def test_read_then_write_transactions_from_two_processes_do_not_collide(
    db_path: Path,
) -> None:
    # revoke_sessions reads before it writes. Begun DEFERRED, a transaction whose snapshot went
    # stale while another connection committed could not upgrade to a writer and would fail at
    # once (SQLITE_BUSY_SNAPSHOT, no busy wait); BEGIN IMMEDIATE queues them instead.
    first, second = SqliteStore(str(db_path)), SqliteStore(str(db_path))
    await first.open()
    await second.open()
    try:
        for i in range(1, 41):
            await first.create_user(make_user(i), make_session(100 + i, i))
        results = await asyncio.gather(
            *((first if i % 2 else second).revoke_sessions(i, [100 + i]) for i in range(1, 41))
        )
        assert results == [True] * 40
        assert await first.existing_sessions(range(101, 141)) == set()
    finally:
        await first.close()
        await second.close()



async def test_open_waits_out_a_busy_answer_to_the_switch_to_wal(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node starting while another recovers the same WAL file gets SQLITE_BUSY at once, past
    SQLite's busy handler; open() must retry the switch instead of failing the start."""
    real_connect = SqliteStore._connect
    refusals = 3

    async def connect(self: SqliteStore) -> aiosqlite.Connection:
        conn = await real_connect(self)
        real_execute = conn.execute

        def execute(sql: str, *args: Any) -> Any:
            nonlocal refusals
            if sql.startswith("PRAGMA journal_mode") and refusals > 0:
                refusals -= 1
                busy = sqlite3.OperationalError("database is locked")
                busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
                raise busy
            return real_execute(sql, *args)

        conn.execute = execute  # type: ignore[method-assign]
        return conn

    monkeypatch.setattr(SqliteStore, "_connect", connect)
    store = SqliteStore(str(db_path), busy_timeout_ms=2000)
    await store.open()
    try:
        assert refusals == 0
        assert (await store.read("PRAGMA journal_mode"))[0][0] == "wal"
    finally:
        await store.close()
