"""One-time codes (SECURITY.md C1, C2) on a real SQLite file with an injected clock, and the
mail queue and outbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import Gone, InvalidArgument
from gateway.mail import MailQueue, Outbox, mailer_from_settings
from gateway.mail import outbox as outbox_module
from gateway.mail.smtp import SmtpMailer
from gateway.services.codes import CODE_GONE, WRONG_CODE, CodeService, Purpose
from gateway.store.base import UserRecord
from gateway.store.codes import CodeStore
from gateway.store.sqlite import SqliteStore

SECRET = b"unit-test-secret"
TTL = 600.0
T0 = 1_700_000_000_000
ALICE, BOB = 101, 202


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "codes.sqlite3"))
    await store.open()
    for uid in (ALICE, BOB):
        await store.create_user(UserRecord(id=uid, name=f"u{uid}", created_at=T0), None)
    yield store
    await store.close()


@pytest.fixture
def codes(db: SqliteStore, clock: Clock) -> CodeService:
    return CodeService(CodeStore(db), SECRET, TTL, 5, clock)


async def gone(codes: CodeService, code: str, purpose: Purpose = Purpose.VERIFY,
               user: int = ALICE) -> None:
    with pytest.raises(Gone) as info:
        await codes.check(user, purpose, code, consume=True)
    assert info.value.message == CODE_GONE


async def wrong(codes: CodeService, code: str, purpose: Purpose = Purpose.VERIFY,
                user: int = ALICE) -> None:
    with pytest.raises(InvalidArgument) as info:
        await codes.check(user, purpose, code, consume=True)
    assert info.value.message == WRONG_CODE


def other(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** 8:08d}"


async def test_codes_are_eight_random_digits(codes: CodeService) -> None:
    issued = {await codes.issue(ALICE, Purpose.VERIFY) for _ in range(30)}
    assert all(re.fullmatch(r"\d{8}", c) for c in issued)
    assert len(issued) > 25  # from a CSPRNG, not a counter or the clock


async def test_a_code_works_once(codes: CodeService) -> None:
    code = await codes.issue(ALICE, Purpose.VERIFY)
    await codes.check(ALICE, Purpose.VERIFY, code, consume=True)
    await gone(codes, code)


async def test_checking_without_consuming_leaves_the_code_usable(codes: CodeService) -> None:
    code = await codes.issue(ALICE, Purpose.RESET)
    await codes.check(ALICE, Purpose.RESET, code, consume=False)
    await codes.check(ALICE, Purpose.RESET, code, consume=True)
    await gone(codes, code, Purpose.RESET)


async def test_a_code_expires_after_its_ttl_by_the_server_clock(codes: CodeService,
                                                                clock: Clock) -> None:
    code = await codes.issue(ALICE, Purpose.VERIFY)
    clock.advance(TTL - 0.001)
    await codes.check(ALICE, Purpose.VERIFY, code, consume=False)
    clock.advance(0.001)
    await gone(codes, code)


async def test_wrong_tries_kill_the_code_even_for_the_right_one_next(codes: CodeService) -> None:
    code = await codes.issue(ALICE, Purpose.VERIFY)
    for _ in range(5):
        await wrong(codes, other(code))
    await gone(codes, code)


async def test_four_wrong_tries_leave_the_code_alive(codes: CodeService) -> None:
    code = await codes.issue(ALICE, Purpose.VERIFY)
    for _ in range(4):
        await wrong(codes, other(code))
    await codes.check(ALICE, Purpose.VERIFY, code, consume=True)


async def test_a_code_is_bound_to_its_purpose_and_account(codes: CodeService) -> None:
    code = await codes.issue(ALICE, Purpose.VERIFY)
    await gone(codes, code, Purpose.RESET)  # no reset code was asked for
    await gone(codes, code, Purpose.VERIFY, user=BOB)
    await codes.issue(ALICE, Purpose.RESET)
    bob_code = await codes.issue(BOB, Purpose.VERIFY)
    if code != bob_code:
        await wrong(codes, code, Purpose.VERIFY, user=BOB)
    await codes.check(ALICE, Purpose.VERIFY, code, consume=True)


async def test_a_new_code_replaces_the_old_one_and_its_count(codes: CodeService) -> None:
    first = await codes.issue(ALICE, Purpose.VERIFY)
    for _ in range(4):
        await wrong(codes, other(first))
    second = await codes.issue(ALICE, Purpose.VERIFY)
    if first != second:
        await wrong(codes, first)
    await codes.check(ALICE, Purpose.VERIFY, second, consume=True)


async def test_only_a_keyed_hash_of_the_code_is_stored(codes: CodeService, db: SqliteStore,
                                                       tmp_path: Path) -> None:
    code = await codes.issue(ALICE, Purpose.RESET)
    path = tmp_path / "codes.sqlite3"
    conn = sqlite3.connect(path)
    try:
        rows = list(conn.execute("SELECT user_id, purpose, code_mac, expires_at, attempts"
                                 " FROM codes"))
    finally:
        conn.close()
    expected = hmac.new(SECRET, f"reset|{ALICE}|{code}".encode(), hashlib.sha256).digest()
    assert rows == [(ALICE, "reset", expected, T0 + int(TTL * 1000), 0)]
    for part in path.parent.glob("codes.sqlite3*"):  # the database, its WAL and shm
        assert code.encode() not in part.read_bytes(), part.name


@pytest.mark.parametrize(("ttl", "attempts"), [(601.0, 5), (0.0, 5), (600.0, 6), (600.0, 0)])
def test_limits_beyond_c1_are_refused(ttl: float, attempts: int) -> None:
    with pytest.raises(ValueError):
        CodeService(CodeStore(SqliteStore(":memory:")), SECRET, ttl, attempts, Clock())


# -- mail -------------------------------------------------------------------------------------

class Failing:
    async def send(self, to: str, subject: str, body: str) -> None:
        raise OSError(f"refused: {body}")


class Blocked:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, to: str, subject: str, body: str) -> None:
        await self.release.wait()
        self.sent.append(to)


async def test_a_full_queue_drops_with_a_warning_and_never_waits(
        caplog: pytest.LogCaptureFixture) -> None:
    mailer = Blocked()
    queue = MailQueue(mailer, 2)
    queue.start()
    try:
        assert queue.submit("a@x.com", "s", "b") and queue.submit("b@x.com", "s", "b")
        while len(queue) > 1:  # the worker takes the first one and blocks on it
            await asyncio.sleep(0)
        assert queue.submit("c@x.com", "s", "b")
        with caplog.at_level(logging.WARNING, "gateway.mail"):
            assert not queue.submit("d@x.com", "s", "b")
        assert queue.dropped == 1 and "mail queue full" in caplog.text
        mailer.release.set()
    finally:
        await queue.stop()
    assert mailer.sent == ["a@x.com", "b@x.com", "c@x.com"]


async def test_a_failed_delivery_is_logged_without_the_body(
        caplog: pytest.LogCaptureFixture) -> None:
    queue = MailQueue(Failing(), 10)
    queue.start()
    with caplog.at_level(logging.WARNING, "gateway.mail"):
        queue.submit("a@x.com", "Reset your password", "your code is 12345678")
        await queue.stop()
    assert queue.failed == 1
    assert "not sent" in caplog.text and "12345678" not in caplog.text


async def test_outbox_writes_files_and_keeps_the_last_messages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "KEEP", 3)
    box = Outbox(tmp_path / "out", "gw@x.com")
    for i in range(5):
        await box.send(f"u{i}@x.com", "hello", f"body {i}")
    assert [m.to for m in box.messages] == ["u2@x.com", "u3@x.com", "u4@x.com"]
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 5
    assert "To: u4@x.com" in files[-1].read_text() and "body 4" in files[-1].read_text()
    assert (tmp_path / "out").stat().st_mode & 0o077 == 0


def test_smtp_is_chosen_when_a_host_is_set(tmp_path: Path) -> None:
    base = Settings(db=str(tmp_path / "g.sqlite3"))
    dev = mailer_from_settings(base)
    assert isinstance(dev, Outbox) and dev.directory == tmp_path / "g.sqlite3.outbox"
    smtp = mailer_from_settings(base.replace(smtp_host="mail.example", smtp_password="pw"))
    assert isinstance(smtp, SmtpMailer) and "pw" not in repr(smtp)
