-- Invites, communities, groups and friends (services/social.py, store/social.py).
-- Times are Unix milliseconds; ids are snowflakes.

CREATE TABLE communities (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);

CREATE TABLE community_members (
    community_id INTEGER NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at    INTEGER NOT NULL,
    PRIMARY KEY (community_id, user_id)
) WITHOUT ROWID;
CREATE INDEX community_members_user ON community_members (user_id);

-- "groups" is an SQL keyword (window frames); the table is chat_groups.
CREATE TABLE chat_groups (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id  INTEGER NOT NULL REFERENCES chat_groups (id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_user ON group_members (user_id);

-- One row per direction: (user_id sees other_id with status). status is
-- types.RelationshipStatus (1 = FRIEND).
CREATE TABLE relationships (
    user_id  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    other_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status   INTEGER NOT NULL,
    since    INTEGER NOT NULL,
    PRIMARY KEY (user_id, other_id),
    CHECK (user_id <> other_id)
) WITHOUT ROWID;

-- target_type is auth.InviteType (1 COMMUNITY, 2 GROUP, 3 USER); target_id is the community,
-- group or user. max_uses 0 means unlimited; the CHECK is the last line of defence for I1.
CREATE TABLE invites (
    code        TEXT PRIMARY KEY,
    creator_id  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    target_type INTEGER NOT NULL CHECK (target_type IN (1, 2, 3)),
    target_id   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    max_uses    INTEGER NOT NULL DEFAULT 0 CHECK (max_uses >= 0),
    uses        INTEGER NOT NULL DEFAULT 0 CHECK (max_uses = 0 OR uses <= max_uses)
);
CREATE INDEX invites_target ON invites (target_type, target_id);

CREATE TABLE invite_redemptions (
    code    TEXT NOT NULL REFERENCES invites (code) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    used_at INTEGER NOT NULL,
    UNIQUE (code, user_id)
);
