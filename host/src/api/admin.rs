//! Admin routes (role ADMIN): component registry and review resolution.
//! Every action is audited (who, what, when).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{role, Principal};
use super::problem::{ApiError, Json, Problem};
use super::AppState;
use crate::components::egress_policy::EgressPolicy;
use crate::components::harness::FixtureFile;
use crate::components::registry::{ActivateError, PushError};
use crate::components::Slot;
use crate::domain::events::FinalStatus;
use crate::domain::payment::OrderStatus;
use crate::store::plugins::{self, Activation, PluginRow};
use crate::store::{orders, reviews};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginList {
    pub plugins: Vec<PluginRow>,
    pub active: Vec<Activation>,
}

/// Stored component versions and the active one per slot.
#[utoipa::path(get, path = "/api/v1/admin/plugins", tag = "admin",
    responses((status = 200, description = "Stored versions and activations", body = PluginList),
        (status = 403, description = "Missing role ADMIN", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_plugins(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<PluginList>, ApiError> {
    principal.require(role::ADMIN)?;
    Ok(axum::Json(PluginList {
        plugins: plugins::list(&state.pool).await?,
        active: plugins::active(&state.pool).await?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushPlugin {
    /// psp-adapter, retry-policy or posting-rules.
    #[schema(pattern = "^(psp-adapter|retry-policy|posting-rules)$")]
    pub slot: String,
    /// The component binary, base64.
    pub wasm_base64: String,
    /// Fixtures the component must pass before it is stored, with a case
    /// for each export of the slot's world (required: an upload without
    /// them is refused). Stored with it and re-run by every activation.
    #[schema(schema_with = fixture_file_schema)]
    pub fixtures: Option<FixtureFile>,
}

/// The outline of a fixture file (`slot`, `config`, `cases`); the case
/// inputs and expectations depend on the slot and are left open.
fn fixture_file_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, SchemaType, Type};
    use utoipa::openapi::ObjectBuilder;
    let string_map = || {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
    };
    let case = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("name", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "call",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("charge | status | decide | post")),
        )
        .property(
            "input",
            ObjectBuilder::new().schema_type(SchemaType::AnyValue),
        )
        .property("config", string_map())
        .property(
            "http",
            ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::Object)),
        )
        .property(
            "expect",
            ObjectBuilder::new().schema_type(SchemaType::AnyValue),
        )
        .required("name")
        .required("call")
        .required("input")
        .required("expect")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Fixtures the component must pass before it is stored, with a case for each export of the slot's world (required).",
        ))
        .property("slot", ObjectBuilder::new().schema_type(Type::String))
        .property("config", string_map())
        .property("cases", ArrayBuilder::new().items(case))
        .required("slot")
        .required("cases")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build()
}

fn parse_slot(text: &str) -> Result<Slot, ApiError> {
    Slot::parse(text).ok_or_else(|| {
        ApiError::validation("slot must be psp-adapter, retry-policy or posting-rules")
    })
}

/// Upload a component version (validated: parses, implements the slot's
/// world, imports nothing else, has fixtures for each export and passes them).
#[utoipa::path(post, path = "/api/v1/admin/plugins", tag = "admin", request_body = PushPlugin,
    responses((status = 201, description = "Stored (not yet active)", body = PluginRow),
        (status = 400, description = "Invalid JSON, unknown slot, or wasmBase64 is not base64", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role ADMIN", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The JSON does not match the request schema, fixtures are missing or fail, or the component was refused", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn push_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<PushPlugin>,
) -> Result<(StatusCode, axum::Json<PluginRow>), ApiError> {
    principal.require(role::ADMIN)?;
    let slot = parse_slot(&body.slot)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.wasm_base64.as_bytes())
        .map_err(|_| ApiError::validation("wasmBase64 is not base64"))?;
    let fixtures: Vec<FixtureFile> = body.fixtures.into_iter().collect();
    match state
        .registry
        .push(slot, &bytes, &fixtures, &principal.subject)
        .await
    {
        Ok(row) => Ok((StatusCode::CREATED, axum::Json(row))),
        Err(PushError::Store(error)) => Err(ApiError::internal(error)),
        Err(PushError::FixturesMissing(detail)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fixtures-required",
            detail,
        )),
        Err(refused) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "component-refused",
            refused.to_string(),
        )),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivatePlugin {
    /// sha256 of a stored version of this slot, lower-case hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: String,
    /// Guest configuration for this activation (no NUL characters).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Where the adapter's requests may go and which secret may be injected
    /// into which headers of requests to which entry. It travels with the
    /// activation; the node's `deny_hosts` can only narrow it. Omitted: the
    /// slot's `allow_hosts` from node config apply.
    #[serde(default)]
    pub egress: Option<EgressPolicy>,
}

/// Make a stored version the active one of its slot on every node, once the
/// fixtures stored with it pass again (with `plugins.require_approval`, only
/// someone other than its uploader may).
#[utoipa::path(post, path = "/api/v1/admin/plugins/{slot}/activate", tag = "admin", request_body = ActivatePlugin,
    params(("slot" = String, Path, pattern = "^(psp-adapter|retry-policy|posting-rules)$",
        description = "psp-adapter, retry-policy or posting-rules")),
    responses((status = 200, description = "Activated", body = Activation),
        (status = 400, description = "Invalid JSON, unknown slot, sha256 not 64 lower-case hex digits, NUL in config, or an egress policy the host cannot enforce", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role ADMIN, or the uploader activating with plugins.require_approval on", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stored version of this slot with that sha256", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The version has no stored fixtures, or they fail now", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn activate_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(slot): Path<String>,
    Json(body): Json<ActivatePlugin>,
) -> Result<axum::Json<Activation>, ApiError> {
    principal.require(role::ADMIN)?;
    let slot = parse_slot(&slot)?;
    // Checked before any lookup: a NUL reached PostgreSQL and its error
    // came back in the 404's detail.
    if body.sha256.len() != 64
        || !body
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::validation(
            "sha256 must be 64 lower-case hex digits",
        ));
    }
    // PostgreSQL jsonb cannot store NUL (it was a 500).
    if body
        .config
        .iter()
        .any(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(ApiError::validation("config must not contain NUL"));
    }
    let config = serde_json::to_value(&body.config).expect("serializes");
    // Entries, names and headers are checked character by character, so
    // a NUL never reaches jsonb.
    if let Some(policy) = &body.egress {
        policy
            .check()
            .map_err(|e| ApiError::validation(format!("egress policy: {e}")))?;
    }
    let activation = state
        .registry
        .activate(
            slot,
            &body.sha256,
            &config,
            body.egress.as_ref(),
            &principal.subject,
        )
        .await
        .map_err(activate_error)?;
    Ok(axum::Json(activation))
}

fn activate_error(error: ActivateError) -> ApiError {
    let refused = |kind: &'static str, detail: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, kind, detail)
    };
    match error {
        ActivateError::NotFound(detail) => ApiError::not_found(detail),
        ActivateError::NeedsApproval(detail) => {
            ApiError::new(StatusCode::FORBIDDEN, "approval-required", detail)
        }
        ActivateError::BadPolicy(_) => ApiError::validation(error.to_string()),
        ActivateError::NoFixtures(_) => refused("no-fixtures", error.to_string()),
        ActivateError::FixturesFailed(_) => refused("fixtures-failed", error.to_string()),
        ActivateError::Refused(_) => refused("component-refused", error.to_string()),
        ActivateError::Store(error) => ApiError::internal(error),
    }
}

/// Re-activate the version that was active before the current one.
#[utoipa::path(post, path = "/api/v1/admin/plugins/{slot}/rollback", tag = "admin",
    params(("slot" = String, Path, pattern = "^(psp-adapter|retry-policy|posting-rules)$",
        description = "psp-adapter, retry-policy or posting-rules")),
    responses((status = 200, description = "Rolled back", body = Activation),
        (status = 400, description = "Unknown slot", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role ADMIN", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nothing to roll back to", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn rollback_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(slot): Path<String>,
) -> Result<axum::Json<Activation>, ApiError> {
    principal.require(role::ADMIN)?;
    let slot = parse_slot(&slot)?;
    let previous = plugins::previous(&state.pool, slot.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::conflict("nothing-to-roll-back", "no earlier version of this slot")
        })?;
    let activation = plugins::activate(
        &state.pool,
        slot.as_str(),
        &previous.sha256,
        &previous.config,
        previous.egress.as_ref(),
        "rollback",
        &principal.subject,
    )
    .await?;
    Ok(axum::Json(activation))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolveReview {
    /// SUCCEEDED or FAILED, as confirmed with the PSP out of band.
    #[schema(pattern = "^(SUCCEEDED|FAILED)$")]
    pub status: String,
    /// Required (non-empty) to resolve as SUCCEEDED.
    #[schema(pattern = r"^[^\x00]*$")]
    pub psp_reference: Option<String>,
    #[schema(pattern = r"^[^\x00]*$")]
    pub reason: String,
}

/// Settle an order in REQUIRES_REVIEW; its finalized event goes through the outbox.
#[utoipa::path(post, path = "/api/v1/admin/payment-orders/{id}/resolve", tag = "admin", request_body = ResolveReview,
    params(("id" = Uuid, Path, description = "Payment order id")),
    responses((status = 204, description = "Resolved"),
        (status = 400, description = "Invalid JSON, id not a UUID, status not SUCCEEDED or FAILED, SUCCEEDED without pspReference, or NUL in a text", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing role ADMIN", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Order is not in REQUIRES_REVIEW", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn resolve_review(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(body): Json<ResolveReview>,
) -> Result<StatusCode, ApiError> {
    principal.require(role::ADMIN)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::validation("payment order id must be a UUID"))?;
    let status = match body.status.as_str() {
        "SUCCEEDED" => FinalStatus::Succeeded,
        "FAILED" => FinalStatus::Failed,
        _ => return Err(ApiError::validation("status must be SUCCEEDED or FAILED")),
    };
    // PostgreSQL text and jsonb cannot store NUL (it was a 500).
    if body.reason.contains('\0') || body.psp_reference.as_deref().unwrap_or("").contains('\0') {
        return Err(ApiError::validation(
            "reason and pspReference must not contain NUL",
        ));
    }
    if status == FinalStatus::Succeeded && body.psp_reference.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::validation(
            "pspReference is required to resolve as SUCCEEDED",
        ));
    }
    let order = orders::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no payment order {id}")))?;
    if order.status != OrderStatus::RequiresReview {
        return Err(ApiError::conflict(
            "not-in-review",
            format!("order is {}", order.status.as_str()),
        ));
    }
    let settlement = reviews::Settlement {
        status,
        psp_reference: body.psp_reference.as_deref(),
        reason: format!("resolved by {}: {}", principal.subject, body.reason),
        actor: &principal.subject,
        action: "resolve-review",
        details: serde_json::json!({ "status": body.status, "pspReference": body.psp_reference, "reason": body.reason }),
    };
    if !reviews::settle(&state.pool, &order, &settlement).await? {
        return Err(ApiError::conflict(
            "not-in-review",
            "order changed concurrently",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
