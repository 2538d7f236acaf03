DROP TABLE session_messages;
DROP TABLE sessions;
DROP TABLE assistants;
DROP TABLE api_keys;
DROP TABLE users;
DROP TABLE organizations;
