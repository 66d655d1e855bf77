//! JWT bearer authentication with roles. HS256 with a shared secret for
//! locally minted tokens (`paynode token`); issuer, audience and expiry are
//! always checked. Roles come from `roles` or Keycloak's `realm_access.roles`.

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::problem::ApiError;
use super::AppState;
use crate::config::AuthConfig;

pub mod role {
    pub const PAYMENT_WRITE: &str = "payment:write";
    pub const FINANCE: &str = "FINANCE";
    pub const ADMIN: &str = "ADMIN";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm_access: Option<RealmAccess>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RealmAccess {
    #[serde(default)]
    pub roles: Vec<String>,
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Only HS256: a token claiming RS256 or `none` is refused outright.
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_secs;
        Authenticator {
            key: DecodingKey::from_secret(config.hs256_secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        let claims = data.claims;
        let mut roles: HashSet<String> = claims.roles.into_iter().collect();
        if let Some(realm) = claims.realm_access {
            roles.extend(realm.roles);
        }
        Ok(Principal {
            subject: claims.sub,
            roles,
        })
    }
}

/// Mints an HS256 token for local use.
pub fn mint(
    config: &AuthConfig,
    subject: &str,
    roles: &[String],
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: subject.to_string(),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        exp: now + ttl_secs,
        iat: now,
        roles: roles.to_vec(),
        realm_access: None,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(config.hs256_secret.as_bytes()),
    )?)
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's subject; idempotency keys are scoped by it.
    pub subject: String,
    pub roles: HashSet<String>,
}

impl Principal {
    pub fn require(&self, role: &str) -> Result<(), ApiError> {
        if self.roles.contains(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("role {role} required")))
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::unauthorized("Authorization must be a Bearer token"))?;
        state.auth.verify(token.trim())
    }
}
