//! `/v1/organization`: the caller's own organization.

use actix_web::{get, patch, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, ValidJson};
use super::{check_name, utc};
use crate::ids::OrgId;
use crate::state::AppState;
use crate::store::orgs::Organization;
use crate::store::{self};

pub fn configure(cfg: &mut ServiceConfig<'_>) {
    cfg.service(get_organization).service(update_organization);
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationView {
    pub id: OrgId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Organization> for OrganizationView {
    fn from(o: Organization) -> Self {
        OrganizationView {
            id: o.id,
            name: o.name,
            created_at: utc(o.created_at),
            updated_at: utc(o.updated_at),
        }
    }
}

#[utoipa::path(
    tag = "organization",
    responses((status = 200, body = OrganizationView), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/organization")]
async fn get_organization(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<OrganizationView>, ApiError> {
    caller.require_org_credential()?;
    let org = caller.org;
    let row = state.db.run(move |c| store::orgs::get(c, org)).await?;
    Ok(web::Json(row.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganization {
    #[schema(min_length = 1, max_length = 200, pattern = r"[^ \t\n\r]")]
    pub name: String,
}

#[utoipa::path(
    tag = "organization",
    request_body = UpdateOrganization,
    responses(
        (status = 200, body = OrganizationView), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/organization")]
async fn update_organization(
    state: web::Data<AppState>,
    caller: Caller,
    body: ValidJson<UpdateOrganization>,
) -> Result<web::Json<OrganizationView>, ApiError> {
    caller.require_admin()?;
    let name = check_name("name", &body.0.name, 200)?.to_owned();
    let org = caller.org;
    let row = state
        .db
        .run(move |c| store::orgs::rename(c, org, &name))
        .await?;
    Ok(web::Json(row.into()))
}
