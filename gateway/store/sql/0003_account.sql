-- Account settings (services/account.py): TOTP enrolment, backup codes, replay guard, deletion.

-- A started, not yet confirmed TOTP enrolment; a new one replaces it.
CREATE TABLE totp_pending (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Single-use backup codes, stored only as HMAC-SHA-256 with the server secret.
CREATE TABLE totp_backup_codes (
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

-- The last accepted TOTP time step per account: a code is never accepted twice.
CREATE TABLE totp_last_step (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    step    INTEGER NOT NULL
);

-- The deletion loop finds due accounts without scanning every user.
CREATE INDEX users_pending_delete ON users (pending_delete_at)
    WHERE pending_delete_at IS NOT NULL;
