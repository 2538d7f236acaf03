//! Diesel table definitions, shared by the SQLite and Postgres backends: the
//! two migration sets create the same columns with the same SQL types.

diesel::table! {
    organizations (id) {
        id -> BigInt,
        name -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        organization_id -> BigInt,
        email -> Text,
        name -> Nullable<Text>,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    api_keys (id) {
        id -> BigInt,
        organization_id -> BigInt,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        created_by_user_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    assistants (id) {
        id -> BigInt,
        organization_id -> BigInt,
        created_by_user_id -> Nullable<BigInt>,
        name -> Text,
        first_message -> Nullable<Text>,
        first_message_interruptible -> Bool,
        system_prompt -> Text,
        llm_provider -> Text,
        llm_model -> Text,
        llm_base_url -> Nullable<Text>,
        llm_temperature -> Double,
        llm_max_tokens -> Integer,
        stt_provider -> Text,
        stt_model -> Text,
        stt_language -> Text,
        tts_provider -> Text,
        tts_voice_id -> Text,
        tts_settings -> Text,
        interruptions_enabled -> Bool,
        min_interruption_ms -> Integer,
        min_interruption_words -> Integer,
        end_of_turn_ms -> Integer,
        background_denoising -> Bool,
        idle_timeout_s -> Integer,
        max_duration_s -> Integer,
        metadata -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    sessions (id) {
        id -> BigInt,
        organization_id -> BigInt,
        assistant_id -> BigInt,
        created_by_user_id -> Nullable<BigInt>,
        status -> Text,
        transport -> Nullable<Text>,
        created_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        ended_at -> Nullable<Timestamp>,
        end_reason -> Nullable<Text>,
        metadata -> Text,
        metrics -> Text,
    }
}

diesel::table! {
    session_messages (id) {
        id -> BigInt,
        session_id -> BigInt,
        seq -> Integer,
        role -> Text,
        content -> Text,
        heard_text -> Nullable<Text>,
        interrupted -> Bool,
        started_at -> Timestamp,
        ended_at -> Nullable<Timestamp>,
        transcript_latency_ms -> Nullable<Integer>,
        first_token_latency_ms -> Nullable<Integer>,
        first_audio_latency_ms -> Nullable<Integer>,
        voice_to_voice_ms -> Nullable<Integer>,
    }
}

diesel::table! {
    rooms (id) {
        id -> BigInt,
        organization_id -> BigInt,
        kind -> Text,
        name -> Nullable<Text>,
        direct_key -> Nullable<Text>,
        created_by_user_id -> Nullable<BigInt>,
        last_message_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        assistant_id -> Nullable<BigInt>,
        assistant_added_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    room_members (room_id, user_id) {
        room_id -> BigInt,
        user_id -> BigInt,
        role -> Text,
        last_read_message_id -> BigInt,
        joined_at -> Timestamp,
    }
}

diesel::table! {
    room_messages (id) {
        id -> BigInt,
        room_id -> BigInt,
        sender_user_id -> Nullable<BigInt>,
        body -> Nullable<Text>,
        attachments -> Text,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamp,
        edited_at -> Nullable<Timestamp>,
        deleted_at -> Nullable<Timestamp>,
        sender_assistant_id -> Nullable<BigInt>,
    }
}

diesel::joinable!(users -> organizations (organization_id));
diesel::joinable!(api_keys -> organizations (organization_id));
diesel::joinable!(assistants -> organizations (organization_id));
diesel::joinable!(sessions -> assistants (assistant_id));
diesel::joinable!(session_messages -> sessions (session_id));
diesel::joinable!(rooms -> organizations (organization_id));
diesel::joinable!(room_members -> rooms (room_id));
diesel::joinable!(room_members -> users (user_id));
diesel::joinable!(room_messages -> rooms (room_id));

diesel::allow_tables_to_appear_in_same_query!(
    organizations,
    users,
    api_keys,
    assistants,
    sessions,
    session_messages,
    rooms,
    room_members,
    room_messages,
);
