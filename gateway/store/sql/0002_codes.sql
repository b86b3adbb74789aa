-- One-time codes (email verification, password reset): SECURITY.md C1, C2.
-- One live code per (account, purpose): a new code replaces the old one. Only an HMAC of the
-- code is stored, never the code itself. The row goes with its account.
CREATE TABLE codes (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL,
    code_mac   BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, purpose)
) WITHOUT ROWID;
