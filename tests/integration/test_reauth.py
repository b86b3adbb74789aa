"""A stolen token alone cannot take a password account over (P4 spirit, S5).

Changing the email (then resetting the password through the new address), enabling TOTP
(locking the owner out) and scheduling deletion need a session signed in with the password
within --reauth-window; a token resumed with auth.authorize after that is refused with 403.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.client import error_code
from tests.support.flows import STRONG, assert_empty_reply, authorization, client, db_rows, gateway


def age_session(db: str, session_id: int, by_ms: int) -> None:
    """Make a session look signed in ``by_ms`` earlier (what waiting out the window does)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE sessions SET created_at = created_at - ? WHERE id = ?",
                     (by_ms, session_id))
        conn.commit()
    finally:
        conn.close()


async def test_old_sessions_must_sign_in_again_before_takeover_steps(tmp_path: Path) -> None:
    async with gateway(tmp_path, reauth_window=600.0) as g:
        db = g.services.settings.db
        async with client(g.url) as owner:
            up = authorization(await owner.sign_up("owner", "owner@example.com", STRONG))
        age_session(db, up.session_id, 601_000)

        async with client(g.url) as thief:  # holds the token, not the password
            authorization(await thief.authorize(up.token))
            res = await thief.call("settings_change_email", new_email="evil@attacker.test")
            assert error_code(res) == 403 and "sign in again" in res.error.error_message
            assert error_code(await thief.call("settings_setup_totp", enabled=True)) == 403
            assert error_code(await thief.call("settings_delete_account")) == 403
        assert db_rows(db, "SELECT email FROM users WHERE id = ?", (up.user.id,)) == [
            ("owner@example.com",)]

        async with client(g.url) as again:  # the owner, with the password: allowed
            authorization(await again.sign_in("owner@example.com", STRONG))
            assert_empty_reply(await again.call("settings_change_email",
                                                new_email="new@example.com"))


async def test_name_only_accounts_have_only_their_token_and_are_not_asked(tmp_path: Path) -> None:
    async with gateway(tmp_path) as g:
        async with client(g.url) as c:
            up = authorization(await c.sign_up("nameonly"))
        age_session(g.services.settings.db, up.session_id, 10**9)
        async with client(g.url) as c:
            authorization(await c.authorize(up.token))
            assert_empty_reply(await c.call("settings_change_email", new_email="me@example.com"))
