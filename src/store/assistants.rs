//! assistants: soft-deleted so past sessions keep pointing at what they ran.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::PageRequest;
use crate::db::{Conn, StoreError, with_conn};
use crate::ids::{AssistantId, OrgId, UserId};
use crate::model::{LlmProvider, SttProvider, TtsProvider};
use crate::schema::assistants;

/// The configurable columns, shared by insert, update and select.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = assistants, treat_none_as_null = true)]
pub struct AssistantSettings {
    pub name: String,
    pub first_message: Option<String>,
    pub first_message_interruptible: bool,
    pub system_prompt: String,
    pub llm_provider: LlmProvider,
    pub llm_model: String,
    pub llm_base_url: Option<String>,
    pub llm_temperature: f64,
    pub llm_max_tokens: i32,
    pub stt_provider: SttProvider,
    pub stt_model: String,
    pub stt_language: String,
    pub tts_provider: TtsProvider,
    pub tts_voice_id: String,
    /// JSON object, provider-specific.
    pub tts_settings: String,
    pub interruptions_enabled: bool,
    pub min_interruption_ms: i32,
    pub min_interruption_words: i32,
    pub end_of_turn_ms: i32,
    pub background_denoising: bool,
    pub idle_timeout_s: i32,
    pub max_duration_s: i32,
    /// JSON object, the caller's own.
    pub metadata: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = assistants)]
pub struct Assistant {
    pub id: AssistantId,
    pub organization_id: OrgId,
    pub created_by_user_id: Option<UserId>,
    #[diesel(embed)]
    pub settings: AssistantSettings,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = assistants)]
struct NewAssistant {
    organization_id: OrgId,
    created_by_user_id: Option<UserId>,
    #[diesel(embed)]
    settings: AssistantSettings,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

pub fn create(
    conn: &mut Conn<'_>,
    org: OrgId,
    created_by: Option<UserId>,
    settings: &AssistantSettings,
) -> Result<Assistant, StoreError> {
    let now = super::now();
    let row = NewAssistant {
        organization_id: org,
        created_by_user_id: created_by,
        settings: settings.clone(),
        created_at: now,
        updated_at: now,
    };
    with_conn!(conn, |c| {
        diesel::insert_into(assistants::table)
            .values(&row)
            .returning(Assistant::as_returning())
            .get_result(c)
    })
    .map_err(Into::into)
}

pub fn get(conn: &mut Conn<'_>, org: OrgId, id: AssistantId) -> Result<Assistant, StoreError> {
    with_conn!(conn, |c| {
        assistants::table
            .filter(assistants::organization_id.eq(org))
            .filter(assistants::id.eq(id))
            .filter(assistants::deleted_at.is_null())
            .select(Assistant::as_select())
            .first(c)
    })
    .map_err(Into::into)
}

pub fn list(
    conn: &mut Conn<'_>,
    org: OrgId,
    page: PageRequest,
) -> Result<(Vec<Assistant>, Option<i64>), StoreError> {
    let rows = with_conn!(conn, |c| {
        let mut query = assistants::table
            .filter(assistants::organization_id.eq(org))
            .filter(assistants::deleted_at.is_null())
            .select(Assistant::as_select())
            .order(assistants::id.desc())
            .limit(page.fetch_limit())
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(assistants::id.lt(after));
        }
        query.load(c)
    })?;
    Ok(page.finish(rows, |a| a.id.0))
}

pub fn update(
    conn: &mut Conn<'_>,
    org: OrgId,
    id: AssistantId,
    settings: &AssistantSettings,
) -> Result<Assistant, StoreError> {
    let now = super::now();
    with_conn!(conn, |c| {
        diesel::update(
            assistants::table
                .filter(assistants::organization_id.eq(org))
                .filter(assistants::id.eq(id))
                .filter(assistants::deleted_at.is_null()),
        )
        .set((settings, assistants::updated_at.eq(now)))
        .returning(Assistant::as_returning())
        .get_result(c)
    })
    .map_err(Into::into)
}

pub fn delete(conn: &mut Conn<'_>, org: OrgId, id: AssistantId) -> Result<(), StoreError> {
    let now = super::now();
    let deleted = with_conn!(conn, |c| {
        diesel::update(
            assistants::table
                .filter(assistants::organization_id.eq(org))
                .filter(assistants::id.eq(id))
                .filter(assistants::deleted_at.is_null()),
        )
        .set(assistants::deleted_at.eq(now))
        .execute(c)
    })?;
    if deleted == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}
