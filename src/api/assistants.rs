//! `/v1/assistants`: what an assistant says, which providers it uses, and how
//! it takes turns. Create and update share one path: defaults (or the stored
//! row), then the input applied on top, then one validation.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody, not_found};
use super::extract::{Caller, ValidJson};
use super::{
    BLANKS, ListQuery, Page, check_len, check_name, json_column, json_object, nullable, utc,
};
use crate::ids::{AssistantId, UserId};
use crate::model::{LlmProvider, Role, SttProvider, TtsProvider};
use crate::state::AppState;
use crate::store::assistants::{Assistant, AssistantSettings};
use crate::store::{self};

const METADATA_MAX_BYTES: usize = 16 * 1024;
const TTS_SETTINGS_MAX_BYTES: usize = 4 * 1024;

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(create_assistant)
        .service(list_assistants)
        .service(get_assistant)
        .service(update_assistant)
        .service(delete_assistant);
}

/// The language model an assistant thinks with.
#[derive(Debug, Serialize, ToSchema)]
pub struct LlmConfig {
    pub provider: LlmProvider,
    pub model: String,
    /// OpenAI-compatible endpoint (provider `openai` only); default OpenAI's.
    pub base_url: Option<String>,
    /// 0 to 2.
    pub temperature: f64,
    /// Longest reply, in tokens.
    pub max_tokens: i32,
}

/// How an assistant hears.
#[derive(Debug, Serialize, ToSchema)]
pub struct SttConfig {
    pub provider: SttProvider,
    pub model: String,
    /// BCP 47 language tag, e.g. `en` or `en-US`.
    pub language: String,
}

/// How an assistant speaks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TtsConfig {
    pub provider: TtsProvider,
    pub voice_id: String,
    /// Provider-specific settings (speed, stability, …).
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantView {
    pub id: AssistantId,
    pub name: String,
    /// Said when a caller connects; none means the assistant waits.
    pub first_message: Option<String>,
    /// Whether the caller can cut the first message short.
    pub first_message_interruptible: bool,
    pub system_prompt: String,
    pub llm: LlmConfig,
    pub stt: SttConfig,
    pub tts: TtsConfig,
    /// Whether caller speech stops the assistant (barge-in).
    pub interruptions_enabled: bool,
    /// Caller speech must last this long to interrupt.
    pub min_interruption_ms: i32,
    /// And contain this many words (0: no word minimum).
    pub min_interruption_words: i32,
    /// Silence after caller speech that ends the caller's turn.
    pub end_of_turn_ms: i32,
    pub background_denoising: bool,
    /// The session ends after this long without caller speech.
    pub idle_timeout_s: i32,
    /// The session ends after this long in any case.
    pub max_duration_s: i32,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_by_user_id: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Assistant> for AssistantView {
    fn from(row: Assistant) -> Self {
        let s = row.settings;
        AssistantView {
            id: row.id,
            name: s.name,
            first_message: s.first_message,
            first_message_interruptible: s.first_message_interruptible,
            system_prompt: s.system_prompt,
            llm: LlmConfig {
                provider: s.llm_provider,
                model: s.llm_model,
                base_url: s.llm_base_url,
                temperature: s.llm_temperature,
                max_tokens: s.llm_max_tokens,
            },
            stt: SttConfig {
                provider: s.stt_provider,
                model: s.stt_model,
                language: s.stt_language,
            },
            tts: TtsConfig {
                provider: s.tts_provider,
                voice_id: s.tts_voice_id,
                settings: json_column(&s.tts_settings),
            },
            interruptions_enabled: s.interruptions_enabled,
            min_interruption_ms: s.min_interruption_ms,
            min_interruption_words: s.min_interruption_words,
            end_of_turn_ms: s.end_of_turn_ms,
            background_denoising: s.background_denoising,
            idle_timeout_s: s.idle_timeout_s,
            max_duration_s: s.max_duration_s,
            metadata: json_column(&s.metadata),
            created_by_user_id: row.created_by_user_id,
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
        }
    }
}

/// Fields to set. On create every field has a default (the name: "New
/// assistant"); on update only the fields present change. `null` clears
/// `first_message` and `llm.base_url` and leaves any other field as it is.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssistantInput {
    #[schema(min_length = 1, max_length = 100, pattern = r"[^ \t\n\r]")]
    pub name: Option<String>,
    /// Blank: none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub first_message: Option<Option<String>>,
    pub first_message_interruptible: Option<bool>,
    #[schema(max_length = 20000)]
    pub system_prompt: Option<String>,
    pub llm: Option<LlmInput>,
    pub stt: Option<SttInput>,
    pub tts: Option<TtsInput>,
    pub interruptions_enabled: Option<bool>,
    #[schema(minimum = 0, maximum = 5000)]
    pub min_interruption_ms: Option<i32>,
    #[schema(minimum = 0, maximum = 20)]
    pub min_interruption_words: Option<i32>,
    #[schema(minimum = 100, maximum = 5000)]
    pub end_of_turn_ms: Option<i32>,
    pub background_denoising: Option<bool>,
    #[schema(minimum = 5, maximum = 3600)]
    pub idle_timeout_s: Option<i32>,
    #[schema(minimum = 10, maximum = 43200)]
    pub max_duration_s: Option<i32>,
    /// At most 16 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmInput {
    /// Changing the provider without a model picks the provider's default.
    pub provider: Option<LlmProvider>,
    #[schema(min_length = 1, max_length = 200, pattern = r"[^ \t\n\r]")]
    pub model: Option<String>,
    /// Any OpenAI-compatible server, for provider `openai` only: given
    /// without a provider, it selects `openai`.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 500, pattern = "^https?://")]
    pub base_url: Option<Option<String>>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(minimum = 1, maximum = 8192)]
    pub max_tokens: Option<i32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SttInput {
    pub provider: Option<SttProvider>,
    #[schema(min_length = 1, max_length = 200, pattern = r"[^ \t\n\r]")]
    pub model: Option<String>,
    /// A language tag such as `en` or `en-US` (spaces, tabs and line breaks
    /// around it are dropped).
    #[schema(pattern = r"^[ \t\n\r]*[A-Za-z0-9-]{2,16}[ \t\n\r]*$")]
    pub language: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtsInput {
    /// Changing the provider without a voice picks the provider's default.
    pub provider: Option<TtsChoice>,
    #[schema(min_length = 1, max_length = 200, pattern = r"[^ \t\n\r]")]
    pub voice_id: Option<String>,
    /// Provider options, at most 4 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
}

/// The voices an assistant may choose now. `fish` (an older value some
/// stored assistants carry) comes back with its adapter (issue 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TtsChoice {
    Local,
    Openai,
    Elevenlabs,
}

impl From<TtsChoice> for TtsProvider {
    fn from(choice: TtsChoice) -> Self {
        match choice {
            TtsChoice::Local => Self::Local,
            TtsChoice::Openai => Self::Openai,
            TtsChoice::Elevenlabs => Self::Elevenlabs,
        }
    }
}

fn default_llm_model(provider: LlmProvider) -> &'static str {
    match provider {
        LlmProvider::Local => "smollm2-135m-instruct",
        LlmProvider::Openai => "gpt-4o-mini",
    }
}

fn default_stt_model(provider: SttProvider) -> &'static str {
    match provider {
        SttProvider::Local => "whisper-tiny.en",
        SttProvider::Openai => "whisper-1",
        SttProvider::Deepgram => "nova-3",
    }
}

/// Each provider's default voice: ElevenLabs' is "Rachel", one of the
/// premade voices every account has.
fn default_voice(provider: TtsChoice) -> &'static str {
    match provider {
        TtsChoice::Local => "en_US-joe-medium",
        TtsChoice::Openai => "alloy",
        TtsChoice::Elevenlabs => "21m00Tcm4TlvDq8ikWAM",
    }
}

/// The settings of a new assistant before the caller's input.
pub fn default_settings() -> AssistantSettings {
    AssistantSettings {
        name: "New assistant".to_owned(),
        first_message: None,
        first_message_interruptible: true,
        system_prompt: "You are a helpful voice assistant. Answer in one or two short, \
                        conversational sentences."
            .to_owned(),
        llm_provider: LlmProvider::Local,
        llm_model: default_llm_model(LlmProvider::Local).to_owned(),
        llm_base_url: None,
        llm_temperature: 0.7,
        llm_max_tokens: 256,
        stt_provider: SttProvider::Local,
        stt_model: default_stt_model(SttProvider::Local).to_owned(),
        stt_language: "en".to_owned(),
        tts_provider: TtsProvider::Local,
        tts_voice_id: default_voice(TtsChoice::Local).to_owned(),
        tts_settings: "{}".to_owned(),
        interruptions_enabled: true,
        min_interruption_ms: 300,
        min_interruption_words: 0,
        end_of_turn_ms: 500,
        background_denoising: false,
        idle_timeout_s: 30,
        max_duration_s: 600,
        metadata: "{}".to_owned(),
    }
}

fn check_range(field: &str, value: i32, min: i32, max: i32) -> Result<(), ApiError> {
    if !(min..=max).contains(&value) {
        return Err(ApiError::validation(
            field,
            format!("{field} must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Applies `input` on top of `s` and validates the result.
pub fn apply(
    mut s: AssistantSettings,
    input: AssistantInput,
) -> Result<AssistantSettings, ApiError> {
    if let Some(name) = input.name {
        s.name = check_name("name", &name, 100)?.to_owned();
    }
    if let Some(first) = input.first_message {
        if let Some(message) = &first {
            check_len("first_message", message, 0, 2_000)?;
        }
        s.first_message = first.filter(|m| !m.trim_matches(BLANKS).is_empty());
    }
    if let Some(v) = input.first_message_interruptible {
        s.first_message_interruptible = v;
    }
    if let Some(prompt) = input.system_prompt {
        s.system_prompt = prompt;
    }
    if let Some(llm) = input.llm {
        // A base URL is for the OpenAI-compatible adapter: it selects it.
        let provider = match (llm.provider, &llm.base_url) {
            (None, Some(Some(_))) => Some(LlmProvider::Openai),
            (provider, _) => provider,
        };
        if let Some(provider) = provider {
            if provider != s.llm_provider && llm.model.is_none() {
                s.llm_model = default_llm_model(provider).to_owned();
            }
            // A base URL belongs to the OpenAI-compatible adapter.
            if provider != LlmProvider::Openai && llm.base_url.is_none() {
                s.llm_base_url = None;
            }
            s.llm_provider = provider;
        }
        if let Some(model) = llm.model {
            s.llm_model = check_name("llm.model", &model, 200)?.to_owned();
        }
        if let Some(base_url) = llm.base_url {
            s.llm_base_url = base_url;
        }
        if let Some(t) = llm.temperature {
            s.llm_temperature = t;
        }
        if let Some(m) = llm.max_tokens {
            s.llm_max_tokens = m;
        }
    }
    if let Some(stt) = input.stt {
        if let Some(provider) = stt.provider {
            if provider != s.stt_provider && stt.model.is_none() {
                s.stt_model = default_stt_model(provider).to_owned();
            }
            s.stt_provider = provider;
        }
        if let Some(model) = stt.model {
            s.stt_model = check_name("stt.model", &model, 200)?.to_owned();
        }
        if let Some(language) = stt.language {
            s.stt_language = language.trim_matches(BLANKS).to_owned();
        }
    }
    if let Some(tts) = input.tts {
        if let Some(choice) = tts.provider {
            let provider = TtsProvider::from(choice);
            if provider != s.tts_provider && tts.voice_id.is_none() {
                s.tts_voice_id = default_voice(choice).to_owned();
            }
            s.tts_provider = provider;
        }
        if let Some(voice) = tts.voice_id {
            s.tts_voice_id = check_name("tts.voice_id", &voice, 200)?.to_owned();
        }
        if let Some(settings) = tts.settings {
            s.tts_settings = json_object("tts.settings", &settings, TTS_SETTINGS_MAX_BYTES)?;
        }
    }
    if let Some(v) = input.interruptions_enabled {
        s.interruptions_enabled = v;
    }
    if let Some(v) = input.min_interruption_ms {
        s.min_interruption_ms = v;
    }
    if let Some(v) = input.min_interruption_words {
        s.min_interruption_words = v;
    }
    if let Some(v) = input.end_of_turn_ms {
        s.end_of_turn_ms = v;
    }
    if let Some(v) = input.background_denoising {
        s.background_denoising = v;
    }
    if let Some(v) = input.idle_timeout_s {
        s.idle_timeout_s = v;
    }
    if let Some(v) = input.max_duration_s {
        s.max_duration_s = v;
    }
    if let Some(metadata) = input.metadata {
        s.metadata = json_object("metadata", &metadata, METADATA_MAX_BYTES)?;
    }
    validate(&s)?;
    Ok(s)
}

fn validate(s: &AssistantSettings) -> Result<(), ApiError> {
    check_len("name", &s.name, 1, 100)?;
    if let Some(first) = &s.first_message {
        check_len("first_message", first, 0, 2_000)?;
    }
    check_len("system_prompt", &s.system_prompt, 0, 20_000)?;
    check_len("llm.model", &s.llm_model, 1, 200)?;
    if let Some(url) = &s.llm_base_url {
        if s.llm_provider != LlmProvider::Openai {
            return Err(ApiError::validation(
                "llm.base_url",
                "llm.base_url applies only to provider `openai` (any OpenAI-compatible server)",
            ));
        }
        check_len("llm.base_url", url, 1, 500)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::validation(
                "llm.base_url",
                "llm.base_url must be an http:// or https:// URL",
            ));
        }
    }
    if !(0.0..=2.0).contains(&s.llm_temperature) {
        return Err(ApiError::validation(
            "llm.temperature",
            "llm.temperature must be between 0 and 2",
        ));
    }
    check_range("llm.max_tokens", s.llm_max_tokens, 1, 8_192)?;
    check_len("stt.model", &s.stt_model, 1, 200)?;
    let language_ok = (2..=16).contains(&s.stt_language.len())
        && s.stt_language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !language_ok {
        return Err(ApiError::validation(
            "stt.language",
            "stt.language must be a language tag such as `en` or `en-US`",
        ));
    }
    check_len("tts.voice_id", &s.tts_voice_id, 1, 200)?;
    check_range("min_interruption_ms", s.min_interruption_ms, 0, 5_000)?;
    check_range("min_interruption_words", s.min_interruption_words, 0, 20)?;
    check_range("end_of_turn_ms", s.end_of_turn_ms, 100, 5_000)?;
    check_range("idle_timeout_s", s.idle_timeout_s, 5, 3_600)?;
    check_range("max_duration_s", s.max_duration_s, 10, 43_200)?;
    Ok(())
}

/// Members change only what they created; managers and admins anything.
fn require_editor(caller: &Caller, row: &Assistant) -> Result<(), ApiError> {
    let role = caller.require_org_credential()?;
    if role.manages_others() || (role == Role::Member && row.created_by_user_id == caller.user_id())
    {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "members can change only assistants they created".into(),
        ))
    }
}

#[utoipa::path(
    tag = "assistants",
    request_body = AssistantInput,
    responses(
        (status = 201, body = AssistantView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/assistants")]
async fn create_assistant(
    state: web::Data<AppState>,
    caller: Caller,
    body: ValidJson<AssistantInput>,
) -> Result<HttpResponse, ApiError> {
    caller.require_org_credential()?;
    let settings = apply(default_settings(), body.0)?;
    let (org, user) = (caller.org, caller.user_id());
    let row = state
        .db
        .run(move |c| store::assistants::create(c, org, user, &settings))
        .await?;
    tracing::info!(assistant = %row.id, org = %org, "assistant created");
    Ok(HttpResponse::Created().json(AssistantView::from(row)))
}

#[utoipa::path(
    tag = "assistants",
    params(ListQuery),
    responses((status = 200, body = Page<AssistantView>), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/assistants")]
async fn list_assistants(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<web::Json<Page<AssistantView>>, ApiError> {
    caller.require_org_credential()?;
    let (org, page) = (caller.org, query.page()?);
    let rows = state
        .db
        .run(move |c| store::assistants::list(c, org, page))
        .await?;
    Ok(web::Json(Page::new(rows, AssistantView::from)))
}

#[utoipa::path(
    tag = "assistants",
    params(("id" = i64, Path, description = "Assistant id")),
    responses((status = 200, body = AssistantView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/assistants/{id}")]
async fn get_assistant(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<web::Json<AssistantView>, ApiError> {
    caller.require_org_credential()?;
    let (org, id) = (caller.org, AssistantId(*id));
    let row = state
        .db
        .run(move |c| store::assistants::get(c, org, id))
        .await
        .map_err(not_found("assistant", id))?;
    Ok(web::Json(row.into()))
}

#[utoipa::path(
    tag = "assistants",
    params(("id" = i64, Path, description = "Assistant id")),
    request_body = AssistantInput,
    responses(
        (status = 200, body = AssistantView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/assistants/{id}")]
async fn update_assistant(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: ValidJson<AssistantInput>,
) -> Result<web::Json<AssistantView>, ApiError> {
    caller.require_org_credential()?;
    let (org, id) = (caller.org, AssistantId(*id));
    let current = state
        .db
        .run(move |c| store::assistants::get(c, org, id))
        .await
        .map_err(not_found("assistant", id))?;
    require_editor(&caller, &current)?;
    let settings = apply(current.settings, body.0)?;
    let row = state
        .db
        .run(move |c| store::assistants::update(c, org, id, &settings))
        .await
        .map_err(not_found("assistant", id))?;
    Ok(web::Json(row.into()))
}

#[utoipa::path(
    tag = "assistants",
    params(("id" = i64, Path, description = "Assistant id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/assistants/{id}")]
async fn delete_assistant(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    caller.require_org_credential()?;
    let (org, id) = (caller.org, AssistantId(*id));
    let current = state
        .db
        .run(move |c| store::assistants::get(c, org, id))
        .await
        .map_err(not_found("assistant", id))?;
    require_editor(&caller, &current)?;
    state
        .db
        .run(move |c| store::assistants::delete(c, org, id))
        .await
        .map_err(not_found("assistant", id))?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> AssistantInput {
        serde_json::from_str(json).expect("valid input json")
    }

    #[test]
    fn create_fills_defaults_and_keeps_given_fields() {
        let s = apply(
            default_settings(),
            input(r#"{"name":" Concierge ","llm":{"temperature":1.5}}"#),
        )
        .expect("valid");
        assert_eq!(s.name, "Concierge");
        assert_eq!(s.llm_temperature, 1.5);
        assert_eq!(s.llm_provider, LlmProvider::Local);
    }

    #[test]
    fn every_field_has_a_default_and_a_base_url_selects_openai() {
        let s = apply(default_settings(), input("{}")).expect("valid");
        assert_eq!(s.name, "New assistant");
        let s = apply(
            default_settings(),
            input(
                r#"{"llm":{"base_url":"http://127.0.0.1:9/v1"},"tts":{"provider":"elevenlabs"}}"#,
            ),
        )
        .expect("valid");
        assert_eq!(s.llm_provider, LlmProvider::Openai);
        assert_eq!(s.llm_model, "gpt-4o-mini");
        assert_eq!(s.tts_voice_id, "21m00Tcm4TlvDq8ikWAM");
        // Leaving openai drops the base URL that went with it.
        let s = apply(s, input(r#"{"llm":{"provider":"local"}}"#)).expect("valid");
        assert_eq!(s.llm_base_url, None);
        // A first message is measured as sent, blank or not.
        let long = format!(r#"{{"first_message":"{}"}}"#, " ".repeat(2_001));
        assert!(apply(s.clone(), input(&long)).is_err());
    }

    #[test]
    fn switching_provider_picks_its_default_model() {
        let s = apply(
            default_settings(),
            input(r#"{"name":"a","llm":{"provider":"openai"}}"#),
        )
        .expect("valid");
        assert_eq!(s.llm_model, "gpt-4o-mini");
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for (json, field) in [
            (
                r#"{"name":"a","llm":{"temperature":2.5}}"#,
                "llm.temperature",
            ),
            (r#"{"name":"a","llm":{"max_tokens":0}}"#, "llm.max_tokens"),
            (r#"{"name":""}"#, "name"),
            (r#"{"name":"a","end_of_turn_ms":50}"#, "end_of_turn_ms"),
            (r#"{"name":" \t\n"}"#, "name"),
            (r#"{"tts":{"voice_id":"  "}}"#, "tts.voice_id"),
            (
                r#"{"name":"a","llm":{"provider":"local","base_url":"http://x"}}"#,
                "llm.base_url",
            ),
            (r#"{"name":"a","metadata":[1]}"#, "metadata"),
            (
                r#"{"name":"a","stt":{"language":"english please"}}"#,
                "stt.language",
            ),
        ] {
            match apply(default_settings(), input(json)) {
                Err(ApiError::Validation { field: Some(f), .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected validation error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn null_clears_a_nullable_field_and_absence_keeps_it() {
        let s = apply(
            default_settings(),
            input(r#"{"name":"a","first_message":"Hi!"}"#),
        )
        .expect("valid");
        let kept = apply(s.clone(), input(r#"{"name":"b"}"#)).expect("valid");
        assert_eq!(kept.first_message.as_deref(), Some("Hi!"));
        let cleared = apply(s, input(r#"{"first_message":null}"#)).expect("valid");
        assert_eq!(cleared.first_message, None);
    }
}
