//! Sign-up, login, token refresh (`/v1/auth/*`) and the organization's users
//! (`/v1/users`).

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, PeerLimited, ValidJson};
use super::orgs::OrganizationView;
use super::{ListQuery, Page, check_len, utc};
use crate::auth;
use crate::config::Secret;
use crate::db::{Db, StoreError};
use crate::ids::{OrgId, UserId};
use crate::model::Role;
use crate::state::AppState;
use crate::store::users::{NewUser, User};
use crate::store::{self};

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(signup)
        .service(login)
        .service(refresh)
        .service(me)
        .service(list_users)
        .service(create_user);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub organization_id: OrgId,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            organization_id: u.organization_id,
            email: u.email,
            name: u.name,
            role: u.role,
            created_at: utc(u.created_at),
        }
    }
}

/// Tokens for a signed-in user.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// `Authorization: Bearer <access_token>` on API calls.
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    /// Exchange at `POST /v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    pub refresh_token_expires_at: DateTime<Utc>,
    pub user: UserView,
}

fn token_pair(state: &AppState, user: User) -> TokenPair {
    let (access_token, access_token_expires_at) =
        state
            .tokens
            .issue_access(user.organization_id, user.id, user.role);
    let (refresh_token, refresh_token_expires_at) =
        state.tokens.issue_refresh(user.organization_id, user.id);
    TokenPair {
        access_token,
        access_token_expires_at,
        refresh_token,
        refresh_token_expires_at,
        user: user.into(),
    }
}

/// Lower-cases and sanity-checks an email address: at most 254
/// characters, spaces, tabs and line breaks only around it, something
/// before the one `@` and a dot after it (the OpenAPI document's pattern).
pub fn normalize_email(email: &str) -> Result<String, ApiError> {
    let trimmed = email.trim_matches(super::BLANKS);
    let valid = email.chars().count() <= 254
        && !trimmed.contains(super::BLANKS)
        && trimmed.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    let email = trimmed.to_lowercase();
    if !valid {
        return Err(ApiError::validation(
            "email",
            "email must be an address like name@example.com",
        ));
    }
    Ok(email)
}

pub fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(10..=200).contains(&chars) {
        return Err(ApiError::validation(
            "password",
            "password must be 10 to 200 characters",
        ));
    }
    Ok(())
}

/// Hashes off the async threads (argon2 takes tens of milliseconds).
async fn hash_password(password: Secret) -> Result<String, ApiError> {
    auth::off_thread(move || auth::hash_password(password.expose()))
        .await
        .map_err(ApiError::from)
}

/// Creates a user in `org`; used by signup, `POST /v1/users` and the CLI.
pub async fn create_user_in(
    db: &Db,
    org: OrgId,
    email: &str,
    name: Option<String>,
    password: Secret,
    role: Role,
) -> Result<User, ApiError> {
    let email = normalize_email(email)?;
    check_password(password.expose())?;
    if let Some(name) = &name {
        check_len("name", name, 1, 200)?;
    }
    let password_hash = hash_password(password).await?;
    let user = db
        .run(move |c| {
            let now = store::now();
            store::users::create(
                c,
                &NewUser {
                    organization_id: org,
                    email: &email,
                    name: name.as_deref(),
                    password_hash: &password_hash,
                    role,
                    created_at: now,
                    updated_at: now,
                },
            )
        })
        .await?;
    Ok(user)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupInput {
    #[schema(
        max_length = 254,
        pattern = r"^[ \t\n\r]*[^@ \t\n\r]+@[^@ \t\n\r]*\.[^@ \t\n\r]*[ \t\n\r]*$"
    )]
    pub email: String,
    #[schema(value_type = String, format = Password, min_length = 10, max_length = 200)]
    pub password: Secret,
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// The new organization; the user becomes its admin.
    #[schema(min_length = 1, max_length = 200, pattern = r"[^ \t\n\r]")]
    pub organization_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignupResult {
    pub organization: OrganizationView,
    #[serde(flatten)]
    pub tokens: TokenPair,
}

#[utoipa::path(
    tag = "auth",
    request_body = SignupInput,
    responses(
        (status = 201, body = SignupResult), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    )
)]
#[post("/auth/signup")]
async fn signup(
    state: web::Data<AppState>,
    _limited: PeerLimited,
    body: ValidJson<SignupInput>,
) -> Result<HttpResponse, ApiError> {
    if !state.settings.auth.allow_signup {
        return Err(ApiError::Forbidden(
            "sign-up is disabled on this server; ask an admin to create your user".into(),
        ));
    }
    let input = body.0;
    let org_name =
        super::check_name("organization_name", &input.organization_name, 200)?.to_owned();
    normalize_email(&input.email)?;
    check_password(input.password.expose())?;
    let org = state
        .db
        .run(move |c| store::orgs::create(c, &org_name))
        .await?;
    let user = create_user_in(
        &state.db,
        org.id,
        &input.email,
        input.name,
        input.password,
        Role::Admin,
    )
    .await?;
    tracing::info!(org = %org.id, user = %user.id, "organization signed up");
    Ok(HttpResponse::Created().json(SignupResult {
        organization: org.into(),
        tokens: token_pair(&state, user),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: Secret,
    /// Needed only when the email belongs to users of several organizations.
    pub organization_id: Option<OrgId>,
}

#[utoipa::path(
    tag = "auth",
    request_body = LoginInput,
    responses(
        (status = 200, body = TokenPair), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    )
)]
#[post("/auth/login")]
async fn login(
    state: web::Data<AppState>,
    _limited: PeerLimited,
    body: ValidJson<LoginInput>,
) -> Result<web::Json<TokenPair>, ApiError> {
    let input = body.0;
    let email = input.email.trim_matches(super::BLANKS).to_lowercase();
    let candidates = state
        .db
        .run(move |c| store::users::find_by_email(c, &email))
        .await?;
    let candidates: Vec<User> = match input.organization_id {
        Some(org) => candidates
            .into_iter()
            .filter(|u| u.organization_id == org)
            .collect(),
        None => candidates,
    };
    let password = input.password;
    let matched = auth::off_thread(move || {
        if candidates.is_empty() {
            auth::burn_password_check(password.expose());
        }
        candidates
            .into_iter()
            .filter(|u| auth::verify_secret(password.expose(), &u.password_hash))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(ApiError::from)?;
    let mut matched = matched.into_iter();
    match (matched.next(), matched.next()) {
        (Some(user), None) => {
            tracing::info!(user = %user.id, org = %user.organization_id, "user logged in");
            Ok(web::Json(token_pair(&state, user)))
        }
        (Some(_), Some(_)) => Err(ApiError::validation(
            "organization_id",
            "this email belongs to users of several organizations; say which with organization_id",
        )),
        _ => Err(ApiError::unauthorized("wrong email or password")),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshInput {
    pub refresh_token: String,
}

#[utoipa::path(
    tag = "auth",
    request_body = RefreshInput,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody))
)]
#[post("/auth/refresh")]
async fn refresh(
    state: web::Data<AppState>,
    _limited: PeerLimited,
    body: ValidJson<RefreshInput>,
) -> Result<web::Json<TokenPair>, ApiError> {
    let claims =
        state
            .tokens
            .verify(&body.0.refresh_token)
            .map_err(|err| ApiError::Unauthorized {
                code: if err == auth::TokenError::Expired {
                    "token_expired"
                } else {
                    "unauthorized"
                },
                message: format!("refresh token refused: {err}; log in again"),
            })?;
    let (auth::TokenKind::Refresh, Some(user_id)) = (claims.typ, claims.uid) else {
        return Err(ApiError::unauthorized("not a refresh token"));
    };
    let org = claims.org;
    // The user must still exist; the new access token carries their current role.
    let user = state
        .db
        .run(move |c| store::users::get(c, org, user_id))
        .await
        .map_err(|err| match err {
            StoreError::NotFound => ApiError::unauthorized("this user no longer exists"),
            other => other.into(),
        })?;
    Ok(web::Json(token_pair(&state, user)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    /// Absent for API keys and session tokens.
    pub user: Option<UserView>,
    pub organization: OrganizationView,
    /// The role this credential acts with (API keys act as admin).
    pub role: Option<Role>,
    /// `api_key`, `user` or `session`.
    pub credential: &'static str,
}

#[utoipa::path(
    tag = "users",
    responses((status = 200, body = MeView), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/users/me")]
async fn me(state: web::Data<AppState>, caller: Caller) -> Result<web::Json<MeView>, ApiError> {
    use super::extract::CallerKind;
    let org = caller.org;
    let user_id = caller.user_id();
    let (organization, user) = state
        .db
        .run(move |c| {
            let organization = store::orgs::get(c, org)?;
            let user = user_id
                .map(|id| store::users::get(c, org, id))
                .transpose()?;
            Ok((organization, user))
        })
        .await
        .map_err(|err| match err {
            StoreError::NotFound => ApiError::unauthorized("this user no longer exists"),
            other => other.into(),
        })?;
    let credential = match caller.kind {
        CallerKind::ApiKey(_) => "api_key",
        CallerKind::User { .. } => "user",
        CallerKind::Session(_) => "session",
    };
    Ok(web::Json(MeView {
        role: user.as_ref().map(|u| u.role).or(caller.role()),
        user: user.map(Into::into),
        organization: organization.into(),
        credential,
    }))
}

#[utoipa::path(
    tag = "users",
    params(ListQuery),
    responses((status = 200, body = Page<UserView>), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/users")]
async fn list_users(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<web::Json<Page<UserView>>, ApiError> {
    if !caller.require_org_credential()?.manages_others() {
        return Err(ApiError::Forbidden(
            "listing users needs the manager or admin role".into(),
        ));
    }
    let (org, page) = (caller.org, query.page()?);
    let rows = state
        .db
        .run(move |c| store::users::list(c, org, page))
        .await?;
    Ok(web::Json(Page::new(rows, UserView::from)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserInput {
    #[schema(
        max_length = 254,
        pattern = r"^[ \t\n\r]*[^@ \t\n\r]+@[^@ \t\n\r]*\.[^@ \t\n\r]*[ \t\n\r]*$"
    )]
    pub email: String,
    #[schema(value_type = String, format = Password, min_length = 10, max_length = 200)]
    pub password: Secret,
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    pub role: Role,
}

#[utoipa::path(
    tag = "users",
    request_body = CreateUserInput,
    responses(
        (status = 201, body = UserView), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/users")]
async fn create_user(
    state: web::Data<AppState>,
    caller: Caller,
    body: ValidJson<CreateUserInput>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let input = body.0;
    let user = create_user_in(
        &state.db,
        caller.org,
        &input.email,
        input.name,
        input.password,
        input.role,
    )
    .await?;
    tracing::info!(user = %user.id, org = %caller.org, role = %user.role, "user created");
    Ok(HttpResponse::Created().json(UserView::from(user)))
}
