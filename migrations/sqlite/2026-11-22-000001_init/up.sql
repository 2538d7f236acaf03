CREATE TABLE organizations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    name TEXT,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'manager', 'member')),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (organization_id, email)
);
CREATE INDEX users_email ON users (email);
CREATE INDEX users_org ON users (organization_id, id);

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    created_by_user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP
);
CREATE INDEX api_keys_org ON api_keys (organization_id, id);

CREATE TABLE assistants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_by_user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    name TEXT NOT NULL,
    first_message TEXT,
    first_message_interruptible BOOLEAN NOT NULL,
    system_prompt TEXT NOT NULL,
    llm_provider TEXT NOT NULL,
    llm_model TEXT NOT NULL,
    llm_base_url TEXT,
    llm_temperature DOUBLE PRECISION NOT NULL,
    llm_max_tokens INTEGER NOT NULL,
    stt_provider TEXT NOT NULL,
    stt_model TEXT NOT NULL,
    stt_language TEXT NOT NULL,
    tts_provider TEXT NOT NULL,
    tts_voice_id TEXT NOT NULL,
    tts_settings TEXT NOT NULL,
    interruptions_enabled BOOLEAN NOT NULL,
    min_interruption_ms INTEGER NOT NULL,
    min_interruption_words INTEGER NOT NULL,
    end_of_turn_ms INTEGER NOT NULL,
    background_denoising BOOLEAN NOT NULL,
    idle_timeout_s INTEGER NOT NULL,
    max_duration_s INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
);
CREATE INDEX assistants_org ON assistants (organization_id, id);

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    assistant_id BIGINT NOT NULL REFERENCES assistants(id),
    created_by_user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    status TEXT NOT NULL CHECK (status IN ('created', 'active', 'ended', 'failed')),
    transport TEXT CHECK (transport IN ('webrtc', 'websocket')),
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    end_reason TEXT,
    metadata TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX sessions_org ON sessions (organization_id, id);
CREATE INDEX sessions_org_status ON sessions (organization_id, status, id);
CREATE INDEX sessions_org_assistant ON sessions (organization_id, assistant_id, id);

CREATE TABLE session_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id BIGINT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    heard_text TEXT,
    interrupted BOOLEAN NOT NULL,
    started_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP,
    transcript_latency_ms INTEGER,
    first_token_latency_ms INTEGER,
    first_audio_latency_ms INTEGER,
    voice_to_voice_ms INTEGER,
    UNIQUE (session_id, seq)
);
