//! The HTTP API: REST under `/v1`, plus `/healthz`, `/readyz`, `/metrics`.
//! Every handler is registered through [`utoipa_actix_web`], so a route
//! cannot exist without appearing in `/v1/openapi.json`.

pub mod api_keys;
pub mod assistants;
pub mod console;
pub mod error;
pub mod extract;
pub mod live;
pub mod ops;
pub mod orgs;
pub mod rooms;
pub mod rooms_ws;
pub mod session_forward;
pub mod session_rtc;
pub mod session_ws;
pub mod sessions;
pub mod users;

use actix_web::HttpRequest;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use self::error::ApiError;
use crate::store::PageRequest;

/// Default page size of list routes.
const DEFAULT_PAGE: i64 = 20;

/// Paging of list routes (newest first).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub after: Option<String>,
}

/// The shape of every cursor: decimal digits, as `next_cursor` writes them
/// (the OpenAPI document says the same, as a pattern; its `$` lets a
/// trailing line break through, so one is ignored here too).
pub(crate) fn parse_cursor(text: &str) -> Option<i64> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let digits = !text.is_empty() && text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

impl ListQuery {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        page_request(self.limit, self.after.as_deref())
    }
}

pub(crate) fn page_request(
    limit: Option<i64>,
    after: Option<&str>,
) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=crate::store::MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            "limit must be between 1 and 100",
        ));
    }
    let after = match after {
        None => None,
        Some(cursor) => Some(parse_cursor(cursor).ok_or_else(|| {
            ApiError::validation("after", "after must be a next_cursor returned by this list")
        })?),
    };
    Ok(PageRequest { after, limit })
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    pub fn new<R>(rows: (Vec<R>, Option<i64>), view: impl FnMut(R) -> T) -> Self {
        Page {
            data: rows.0.into_iter().map(view).collect(),
            next_cursor: rows.1.map(|c| c.to_string()),
        }
    }
}

/// Stored timestamps are naive UTC; the API speaks RFC 3339.
pub(crate) fn utc(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

/// For `PATCH` fields that may be set to null: absent is `None`, `null` is
/// `Some(None)`.
pub(crate) fn nullable<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// Parses a JSON object column written by the server itself.
pub(crate) fn json_column(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| {
        tracing::warn!(%err, "stored JSON column is not valid JSON; returning {{}}");
        serde_json::Value::Object(Default::default())
    })
}

/// Checks an API-supplied JSON object and returns it serialized.
pub(crate) fn json_object(
    field: &str,
    value: &serde_json::Value,
    max_bytes: usize,
) -> Result<String, ApiError> {
    if !value.is_object() {
        return Err(ApiError::validation(
            field,
            format!("{field} must be a JSON object"),
        ));
    }
    let text = value.to_string();
    if text.len() > max_bytes {
        return Err(ApiError::validation(
            field,
            format!("{field} is {} bytes; the limit is {max_bytes}", text.len()),
        ));
    }
    Ok(text)
}

/// What a name may not be made of only, and what is trimmed from it:
/// spaces, tabs and line breaks. The OpenAPI document says the same of
/// each name with the pattern `[^ \t\n\r]`.
pub(crate) const BLANKS: [char; 4] = [' ', '\t', '\n', '\r'];

/// A name as sent: 1 to `max` characters, not only [`BLANKS`]; answers it
/// trimmed of them.
pub(crate) fn check_name<'a>(field: &str, raw: &'a str, max: usize) -> Result<&'a str, ApiError> {
    check_len(field, raw, 1, max)?;
    let trimmed = raw.trim_matches(BLANKS);
    if trimmed.is_empty() {
        return Err(ApiError::validation(
            field,
            format!("{field} must not be blank"),
        ));
    }
    Ok(trimmed)
}

pub(crate) fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars < min || chars > max {
        let message = if min > 0 && chars < min {
            format!("{field} must not be empty")
        } else {
            format!("{field} is {chars} characters; the limit is {max}")
        };
        return Err(ApiError::validation(field, message));
    }
    Ok(())
}

/// The local address a connection was accepted on, stored with the
/// connection when it opens (see `server::start`).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// The public base URL of this node for the session URLs it hands out:
/// `server.public_url` when set; else, for a request from one of
/// `server.trusted_proxies`, what its forwarding headers say; else the
/// address the client connected to. A client's own `Host` or
/// `X-Forwarded-Host` never reaches the URL (it would let anyone who can
/// create a session point the URLs it hands on at another host).
pub(crate) fn public_base(req: &HttpRequest, server: &crate::config::ServerSettings) -> String {
    if let Some(url) = &server.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let from_proxy = req
        .peer_addr()
        .is_some_and(|peer| server.trusted_proxies.contains(&peer.ip()));
    if from_proxy {
        let info = req.connection_info();
        return format!("{}://{}", info.scheme(), info.host());
    }
    let local = req
        .conn_data::<LocalAddr>()
        .map_or(server.bind, |addr| addr.0);
    format!("http://{local}")
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palaver API",
        description = "Realtime voice sessions: assistants, sessions, transcripts, users and keys. \
                       Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`.",
    ),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody)),
    tags(
        (name = "assistants", description = "What an assistant says and how it listens"),
        (name = "sessions", description = "Voice sessions and their transcripts"),
        (name = "auth", description = "Sign-up, login, tokens"),
        (name = "users", description = "People in the organization"),
        (name = "api-keys", description = "Server credentials"),
        (name = "organization", description = "The caller's organization"),
        (name = "rooms", description = "Chat rooms, members, messages, read receipts"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An organization API key (`pk_…`), a user's access token, or a \
                         session's join token.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds to every operation of the served document the error answers the
/// server gives on every route of its kind, where the route's own
/// annotation did not name them: 401, 403 and 429 wherever a credential is
/// taken; 400, 413, 415 and 422 (JSON) or 400, 413 and 415 (SDP) wherever a
/// body is read; 400 wherever a query string is parsed. A client generated
/// from the document then knows every status it can meet.
pub fn complete_document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    only_openai_takes_a_base_url(doc);
    for item in doc.paths.paths.values_mut() {
        let operations = [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ];
        for operation in operations.into_iter().flatten() {
            let mut statuses: Vec<(&str, &str)> = Vec::new();
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                statuses.extend([
                    ("401", "No credential, or one that is invalid or expired"),
                    (
                        "403",
                        "The credential may not do this (a role, or a session's join token)",
                    ),
                    ("429", "Over the credential's rate limit; see `Retry-After`"),
                ]);
            }
            if let Some(body) = &operation.request_body {
                statuses.extend([
                    ("400", "The body cannot be read"),
                    (
                        "408",
                        "The body did not arrive within `server.body_read_timeout_ms`",
                    ),
                    ("413", "The body is over `server.body_limit_bytes`"),
                    ("415", "Wrong `Content-Type`"),
                ]);
                if body.content.contains_key("application/json") {
                    statuses.push((
                        "422",
                        "A field is missing, unknown, of the wrong type or out of range",
                    ));
                }
            }
            let has_query = operation
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, ParameterIn::Query));
            if has_query {
                statuses.extend([
                    ("400", "The query string cannot be read"),
                    ("422", "A query parameter is out of range"),
                ]);
            }
            for (status, description) in statuses {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
}

/// `llm.base_url` with a provider other than `openai` is refused: the
/// document says so (a rule across two fields, which the derived schema
/// cannot say).
fn only_openai_takes_a_base_url(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, SchemaType, Type};
    let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let Some(derived) = schemas.remove("LlmInput") else {
        return;
    };
    let openai_or_no_provider = ObjectBuilder::new().property(
        "provider",
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .enum_values(Some([serde_json::json!("openai"), serde_json::Value::Null])),
    );
    let no_base_url =
        ObjectBuilder::new().property("base_url", ObjectBuilder::new().schema_type(Type::Null));
    let rule = AnyOfBuilder::new()
        .item(openai_or_no_provider)
        .item(no_base_url);
    let combined = AllOfBuilder::new()
        .item(derived)
        .item(rule)
        .description(Some(
            "`base_url` goes with provider `openai` (given without a provider, it selects it)",
        ));
    schemas.insert("LlmInput".to_owned(), combined.into());
}

/// Registers every route; the caller adds the OpenAPI document route.
pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.map(console::configure)
        .service(ops::healthz)
        .service(ops::readyz)
        .service(ops::prometheus_metrics)
        .service(
            utoipa_actix_web::scope("/v1")
                .configure(users::configure)
                .configure(api_keys::configure)
                .configure(orgs::configure)
                .configure(assistants::configure)
                .configure(sessions::configure)
                .configure(rooms_ws::configure)
                .configure(rooms::configure)
                .configure(session_ws::configure)
                .configure(session_rtc::configure),
        );
}
