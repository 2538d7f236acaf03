-- Chat rooms between users of one organization: direct (exactly two users,
-- one room per pair: direct_key is "<lower id>:<higher id>") or group.
CREATE TABLE rooms (
    id BIGSERIAL PRIMARY KEY,
    organization_id BIGINT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name TEXT,
    direct_key TEXT,
    created_by_user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    last_message_id BIGINT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (organization_id, direct_key)
);
CREATE INDEX rooms_org ON rooms (organization_id, id);

-- last_read_message_id is 0 until the member reads something.
CREATE TABLE room_members (
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    last_read_message_id BIGINT NOT NULL,
    joined_at TIMESTAMP NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id, room_id);

-- A deleted message keeps its row (deleted_at set, body NULL, attachments
-- '[]') so history and reconnecting clients see the deletion.
CREATE TABLE room_messages (
    id BIGSERIAL PRIMARY KEY,
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    sender_user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    body TEXT,
    attachments TEXT NOT NULL,
    idempotency_key TEXT,
    created_at TIMESTAMP NOT NULL,
    edited_at TIMESTAMP,
    deleted_at TIMESTAMP,
    UNIQUE (room_id, sender_user_id, idempotency_key)
);
CREATE INDEX room_messages_room ON room_messages (room_id, id);
