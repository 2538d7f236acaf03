//! `/v1/api-keys`: server credentials of the organization (admins only). The
//! key itself is shown once, at creation; afterwards only its prefix.

use actix_web::{HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody, not_found};
use super::extract::{Caller, ValidJson};
use super::{ListQuery, Page, check_len, utc};
use crate::auth;
use crate::db::{Db, StoreError};
use crate::ids::{ApiKeyId, OrgId, UserId};
use crate::state::AppState;
use crate::store::api_keys::{ApiKey, NewApiKey};
use crate::store::{self};

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(create_key)
        .service(list_keys)
        .service(revoke_key);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_by_user_id: Option<UserId>,
    pub created_at: DateTime<Utc>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_by_user_id: k.created_by_user_id,
            created_at: utc(k.created_at),
            last_used_at: k.last_used_at.map(utc),
            revoked_at: k.revoked_at.map(utc),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyView,
    /// The key. Store it now: it is not shown again.
    pub key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Generates, hashes and stores a key; returns the row and the secret.
/// Used by the API and by `palaver admin create-key`.
pub async fn issue_key(
    db: &Db,
    org: OrgId,
    name: String,
    created_by: Option<UserId>,
) -> Result<CreatedApiKey, ApiError> {
    check_len("name", &name, 1, 100)?;
    // A 32-bit visible prefix can collide; try a fresh key a few times.
    for _ in 0..3 {
        let generated = auth::generate_api_key();
        let secret = generated.secret.clone();
        let hash = auth::off_thread(move || auth::hash_api_key(secret.expose()))
            .await
            .map_err(ApiError::from)?;
        let name = name.clone();
        let prefix = generated.prefix.clone();
        let inserted = db
            .run(move |c| {
                store::api_keys::create(
                    c,
                    &NewApiKey {
                        organization_id: org,
                        name: &name,
                        prefix: &prefix,
                        key_hash: &hash,
                        created_by_user_id: created_by,
                        created_at: store::now(),
                    },
                )
            })
            .await;
        match inserted {
            Ok(row) => {
                return Ok(CreatedApiKey {
                    info: row.into(),
                    key: generated.secret.expose().to_owned(),
                });
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _,
            ))) => return Err(ApiError::NotFound(format!("no organization with id {org}"))),
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::Internal(
        "could not generate a unique API key prefix".into(),
    ))
}

#[utoipa::path(
    tag = "api-keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, body = CreatedApiKey), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/api-keys")]
async fn create_key(
    state: web::Data<AppState>,
    caller: Caller,
    body: ValidJson<CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let created = issue_key(&state.db, caller.org, body.0.name, caller.user_id()).await?;
    tracing::info!(key = %created.info.id, prefix = %created.info.prefix, org = %caller.org, "API key created");
    Ok(HttpResponse::Created().json(created))
}

#[utoipa::path(
    tag = "api-keys",
    params(ListQuery),
    responses((status = 200, body = Page<ApiKeyView>), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/api-keys")]
async fn list_keys(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<web::Json<Page<ApiKeyView>>, ApiError> {
    caller.require_admin()?;
    let (org, page) = (caller.org, query.page()?);
    let rows = state
        .db
        .run(move |c| store::api_keys::list(c, org, page))
        .await?;
    Ok(web::Json(Page::new(rows, ApiKeyView::from)))
}

#[utoipa::path(
    tag = "api-keys",
    params(("id" = i64, Path, description = "API key id")),
    responses(
        (status = 200, body = ApiKeyView, description = "Revoked (or already revoked)"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/api-keys/{id}")]
async fn revoke_key(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
) -> Result<web::Json<ApiKeyView>, ApiError> {
    caller.require_admin()?;
    let (org, id) = (caller.org, ApiKeyId(*id));
    let row = state
        .db
        .run(move |c| store::api_keys::revoke(c, org, id))
        .await
        .map_err(not_found("API key", id))?;
    state.verified_keys.forget(&row.prefix);
    tracing::info!(key = %id, prefix = %row.prefix, org = %org, "API key revoked");
    Ok(web::Json(row.into()))
}
