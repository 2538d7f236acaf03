ALTER TABLE room_messages DROP COLUMN sender_assistant_id;
ALTER TABLE rooms DROP COLUMN assistant_added_at;
ALTER TABLE rooms DROP COLUMN assistant_id;
