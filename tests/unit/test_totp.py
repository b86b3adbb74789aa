"""TOTP codes, backup codes, enrolment expiry and the deletion schedule, with time as a number.

The service runs on a real SQLite file (no sockets); its clock is a variable the tests move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from gateway.app import Services
from gateway.errors import FailedPrecondition, InvalidArgument
from gateway.services import account
from gateway.services.account import AccountSettingsService, normalize_code, totp_step
from gateway.services.sessions import Device
from tests.support.gateway import test_settings

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
T0 = 1_700_000_010.0  # seconds, 10 s into step T0 // 30


class Clock:
    def __init__(self) -> None:
        self.ms = int(T0 * 1000)

    def __call__(self) -> int:
        return self.ms


def test_a_code_is_accepted_one_step_either_side_and_no_further() -> None:
    otp = pyotp.TOTP(SECRET)
    step = int(T0 // 30)
    code = otp.generate_otp(step)
    assert totp_step(SECRET, code, T0) == step
    assert totp_step(SECRET, code, T0 - 30) == step  # the client's clock runs fast
    assert totp_step(SECRET, code, T0 + 30) == step  # or slow
    assert totp_step(SECRET, code, T0 + 60) is None
    assert totp_step(SECRET, code, T0 - 60) is None
    assert totp_step(SECRET, otp.generate_otp(step + 1), T0) == step + 1
    assert pyotp.TOTP(SECRET).verify(code, for_time=T0, valid_window=1)  # same as pyotp


def test_codes_are_normalised_as_typed() -> None:
    assert normalize_code(" 123 456 ") == "123456"
    assert normalize_code("ABCDE-fghjk") == "abcdefghjk"
    assert normalize_code("1" * 65) == ""


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[tuple[AccountSettingsService, Clock, int]]:
    services = Services(test_settings(tmp_path, totp_enrol_timeout=60.0,
                                      account_delete_grace=100.0))
    await services.start()
    clock = Clock()
    service = account.build(services)  # a second instance, on the fake clock
    service.clock_ms = clock
    signed = await services.accounts.sign_up("u@example.com", "long enough password", "U",
                                             Device(ip="10.0.0.1"))
    try:
        yield service, clock, signed.user.id
    finally:
        await services.stop()


async def _enable(service: AccountSettingsService, clock: Clock, user_id: int) -> tuple[str, list[str]]:
    url = await service.start_totp(user_id)
    secret = pyotp.parse_uri(url).secret
    codes = await service.confirm_totp(user_id, pyotp.TOTP(secret).at(clock.ms / 1000), "ip")
    return secret, codes


async def test_a_step_is_accepted_once_and_never_an_earlier_one(
        svc: tuple[AccountSettingsService, Clock, int]) -> None:
    service, clock, uid = svc
    secret, _ = await _enable(service, clock, uid)
    otp = pyotp.TOTP(secret)
    now = clock.ms / 1000
    # The enabling code's step is spent.
    assert not await service.check_sign_in_code(uid, secret, otp.at(now))
    assert await service.check_sign_in_code(uid, secret, otp.at(now + 30))
    assert not await service.check_sign_in_code(uid, secret, otp.at(now + 30))
    clock.ms += 60_000
    # Step now-1 is inside the window but older than the last accepted one.
    assert not await service.check_sign_in_code(uid, secret, otp.at(now + 30))
    assert await service.check_sign_in_code(uid, secret, otp.at(now + 60))
    assert not await service.check_sign_in_code(uid, secret, None)


async def test_backup_codes_work_once_each(svc: tuple[AccountSettingsService, Clock, int]) -> None:
    service, clock, uid = svc
    secret, codes = await _enable(service, clock, uid)
    assert len(codes) == 10
    for code in codes[:3]:
        assert await service.check_sign_in_code(uid, secret, code)
        assert not await service.check_sign_in_code(uid, secret, code)
    assert not await service.check_sign_in_code(uid + 1, secret, codes[3])  # bound to its account


async def test_an_enrolment_expires(svc: tuple[AccountSettingsService, Clock, int]) -> None:
    service, clock, uid = svc
    secret = pyotp.parse_uri(await service.start_totp(uid)).secret
    clock.ms += 61_000
    with pytest.raises(FailedPrecondition):
        await service.confirm_totp(uid, pyotp.TOTP(secret).at(clock.ms / 1000), "ip")
    secret = pyotp.parse_uri(await service.start_totp(uid)).secret
    with pytest.raises(InvalidArgument):
        await service.confirm_totp(uid, pyotp.TOTP(secret).at(clock.ms / 1000 + 90), "ip")
    assert await service.confirm_totp(uid, pyotp.TOTP(secret).at(clock.ms / 1000), "ip")


async def test_deletion_waits_for_the_grace_and_removes_totp_state(
        svc: tuple[AccountSettingsService, Clock, int]) -> None:
    service, clock, uid = svc
    await _enable(service, clock, uid)
    await service.schedule_delete(uid, current_session=0)
    clock.ms += 99_000
    assert await service.delete_due() == 0
    await service.cancel_delete(uid)
    with pytest.raises(FailedPrecondition):
        await service.cancel_delete(uid)
    await service.schedule_delete(uid, current_session=0)
    clock.ms += 100_000
    assert await service.delete_due() == 1
    db = service.repo._db  # type: ignore[attr-defined]
    for table in ("users", "sessions", "totp_backup_codes", "totp_last_step", "totp_pending"):
        assert await db.read(f"SELECT count(*) FROM {table}") == [(0,)], table
