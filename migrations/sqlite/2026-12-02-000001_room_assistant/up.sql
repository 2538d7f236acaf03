-- A room may have one assistant of its organization as a member, answering
-- users' messages with its language model (set when the room is created or
-- later by an owner or admin; NULL: no assistant). assistant_added_at is
-- when it joined: its joined_at in the member list.
ALTER TABLE rooms ADD COLUMN assistant_id BIGINT REFERENCES assistants(id) ON DELETE SET NULL;
ALTER TABLE rooms ADD COLUMN assistant_added_at TIMESTAMP;

-- A message is sent by a user (sender_user_id) or by the room's assistant
-- (sender_assistant_id), never both.
ALTER TABLE room_messages ADD COLUMN sender_assistant_id BIGINT REFERENCES assistants(id) ON DELETE SET NULL;
