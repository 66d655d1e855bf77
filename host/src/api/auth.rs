//! JWT bearer authentication with roles.
//!
//! Two kinds of tokens are accepted:
//! - RS256/ES256 (and the other RSA/EC algorithms) signed by a key of the
//!   identity provider's JWKS (`auth.jwks_url`). The algorithm is taken from
//!   the key (`kty`, `crv`, `alg`), never from the token: a token whose header
//!   disagrees with its key is refused. Keys are fetched once at start and
//!   cached; a stale set (older than `auth.jwks_refresh_secs`) or a token
//!   naming an unknown `kid` starts a refresh **in the background** (at most
//!   one per `auth.jwks_min_refresh_secs`, one at a time). No request ever
//!   waits for the identity provider: an unknown `kid` is refused at once and
//!   works once the refresh has landed. The body is read up to
//!   [`MAX_JWKS_BYTES`] and the fetch given up past it.
//! - HS256 with the shared `auth.hs256_secret` for locally minted tokens
//!   (`paynode token`), when HS256 is enabled (by default only without a
//!   JWKS; beside one, HS256 tokens carry their own `auth.hs256_issuer`).
//!   JWKS keys are never used as HMAC secrets, so a token "signed" with a
//!   public key is refused.
//!
//! Issuer, audience, expiry (with `auth.leeway_secs`) and `nbf` are always
//! checked, and the lifetime `exp - iat` must be at most
//! `auth.max_token_lifetime_secs` (a token without `iat` is refused). Roles come from `roles` or Keycloak's `realm_access.roles`.
//!
//! A 401 says only which check failed: the library's reason and the token's
//! own header fields (an attacker's `kid`) are logged, never echoed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use super::problem::ApiError;
use super::AppState;
use crate::config::AuthConfig;

pub mod role {
    pub const PAYMENT_WRITE: &str = "payment:write";
    pub const FINANCE: &str = "FINANCE";
    pub const ADMIN: &str = "ADMIN";
}

/// Claims of a locally minted token.
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

/// What is read from a verified token. `iss`, `aud` and `exp` are checked by
/// [`Validation`] on the raw claims (`aud` may be a string or an array).
#[derive(Debug, Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    realm_access: Option<RealmAccess>,
}

/// Upper bound on a JWKS document, enforced while reading. Real key sets
/// are a few KiB (Keycloak's with a dozen keys is under 20 KiB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A verification key from the JWKS with the one algorithm it may verify.
#[derive(Clone)]
struct JwksKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    by_kid: HashMap<String, JwksKey>,
    /// Keys published without a `kid`; used only when the set holds exactly
    /// one key and the token has no `kid`.
    anonymous: Vec<JwksKey>,
    /// Last successful fetch.
    fetched_at: Option<Instant>,
    /// Last fetch attempt, successful or not (rate limit).
    attempted_at: Option<Instant>,
    /// A fetch is running (one at a time).
    fetching: bool,
}

struct Jwks {
    url: String,
    http: reqwest::Client,
    refresh_after: Duration,
    min_interval: Duration,
    cache: RwLock<KeyCache>,
}

pub struct Authenticator {
    /// `None` when HS256 is off or no secret is configured.
    hs256_key: Option<DecodingKey>,
    hs256_issuer: String,
    jwks: Option<Arc<Jwks>>,
    issuer: String,
    audience: String,
    leeway: u64,
    max_lifetime_secs: u64,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let hs256_key = config
            .hs256_key()
            .filter(|secret| config.hs256_enabled() && !secret.is_empty())
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let jwks = config.jwks_url.as_ref().map(|url| {
            Arc::new(Jwks {
                url: url.clone(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
                refresh_after: Duration::from_secs(config.jwks_refresh_secs.max(1)),
                min_interval: Duration::from_secs(config.jwks_min_refresh_secs),
                cache: RwLock::new(KeyCache::default()),
            })
        });
        Authenticator {
            hs256_key,
            hs256_issuer: config.hs256_token_issuer().to_string(),
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
            max_lifetime_secs: config.max_token_lifetime_secs,
        }
    }

    /// Loads the key set once before the node serves (nothing waits on it
    /// yet). A failure is logged; tokens are refused until a refresh works.
    pub async fn warm_up(&self) {
        if let Some(jwks) = &self.jwks {
            if jwks.claim_fetch() {
                jwks.fetch_and_store().await;
            }
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        // Exactly one algorithm, the one chosen by the key.
        validation.algorithms = vec![algorithm];
        // HS256 tokens have an issuer of their own (when configured), so a
        // token minted here never passes for one of the identity provider.
        let issuer = if algorithm == Algorithm::HS256 {
            &self.hs256_issuer
        } else {
            &self.issuer
        };
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        validation
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        // `alg: none` and unknown algorithms fail here.
        let header = decode_header(token).map_err(|e| refuse("malformed token", e))?;
        let (key, algorithm) = if header.alg == Algorithm::HS256 {
            let key = self
                .hs256_key
                .clone()
                .ok_or_else(|| refuse("HS256 tokens are not accepted", "HS256 off"))?;
            (key, Algorithm::HS256)
        } else {
            let jwks = self
                .jwks
                .as_ref()
                .ok_or_else(|| refuse("only HS256 tokens are accepted", "no JWKS"))?;
            let found = jwks.key_for(header.kid.as_deref())?;
            if found.algorithm != header.alg {
                return Err(refuse(
                    "token algorithm does not match its key",
                    format_args!("header {:?}, key {:?}", header.alg, found.algorithm),
                ));
            }
            (found.key, found.algorithm)
        };
        let data = decode::<VerifiedClaims>(token, &key, &self.validation(algorithm))
            .map_err(|e| refuse("invalid token", e))?;
        let claims = data.claims;
        self.check_lifetime(&claims)?;
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

impl Authenticator {
    /// `exp - iat` within `auth.max_token_lifetime_secs`: a token minted to
    /// live for a year is refused even while its `exp` is in the future.
    fn check_lifetime(&self, claims: &VerifiedClaims) -> Result<(), ApiError> {
        let Some(iat) = claims.iat else {
            return Err(refuse("token has no iat", "no iat"));
        };
        let lifetime = claims.exp.saturating_sub(iat);
        if lifetime > self.max_lifetime_secs {
            return Err(refuse(
                "token lifetime too long",
                format_args!("exp - iat = {lifetime} s, cap {} s", self.max_lifetime_secs),
            ));
        }
        Ok(())
    }
}

impl Jwks {
    /// The key a token names, from the cache only. An unknown kid or a stale
    /// set starts a background refresh; the request never waits for it.
    fn key_for(self: &Arc<Self>, kid: Option<&str>) -> Result<JwksKey, ApiError> {
        let (found, stale) = {
            let cache = self.cache.read().expect("jwks cache lock");
            let stale = cache
                .fetched_at
                .is_none_or(|at| at.elapsed() >= self.refresh_after);
            (cache.lookup(kid), stale)
        };
        if found.is_none() || stale {
            self.refresh_in_background();
        }
        found.ok_or_else(|| match kid {
            Some(kid) => refuse("unknown signing key", format_args!("kid {kid:?}")),
            None => refuse("token has no kid", "no kid"),
        })
    }

    /// Starts a fetch unless one runs or the rate limit forbids it.
    fn refresh_in_background(self: &Arc<Self>) {
        if !self.claim_fetch() {
            return;
        }
        let jwks = self.clone();
        tokio::spawn(async move { jwks.fetch_and_store().await });
    }

    /// Takes the right to fetch: none running, and the last attempt at
    /// least `jwks_min_refresh_secs` ago, so bogus kids cannot hammer the
    /// identity provider.
    fn claim_fetch(&self) -> bool {
        let mut cache = self.cache.write().expect("jwks cache lock");
        let too_soon = cache
            .attempted_at
            .is_some_and(|at| at.elapsed() < self.min_interval);
        if cache.fetching || too_soon {
            return false;
        }
        cache.fetching = true;
        cache.attempted_at = Some(Instant::now());
        true
    }

    /// Fetches the set and replaces the cache; a failed fetch keeps serving
    /// the keys already known.
    async fn fetch_and_store(&self) {
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().expect("jwks cache lock");
        cache.fetching = false;
        match fetched {
            Ok((by_kid, anonymous)) => {
                tracing::info!(url = %self.url, keys = by_kid.len() + anonymous.len(), "JWKS loaded");
                cache.by_kid = by_kid;
                cache.anonymous = anonymous;
                cache.fetched_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed"),
        }
    }

    async fn fetch(&self) -> anyhow::Result<(HashMap<String, JwksKey>, Vec<JwksKey>)> {
        let response = self.http.get(&self.url).send().await?.error_for_status()?;
        let body = read_capped(response, MAX_JWKS_BYTES).await?;
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = serde_json::from_slice(&body)?;
        let mut by_kid = HashMap::new();
        let mut anonymous = Vec::new();
        // One unusable key (an encryption key, an unknown type) must not
        // make the whole set unusable: such keys are skipped.
        for value in raw.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(key) = verification_key(&jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => anonymous.push(key),
            }
        }
        Ok((by_kid, anonymous))
    }
}

/// The body, read chunk by chunk and given up as soon as it passes `cap`
/// (a declared length past it is refused before reading), so an endless or
/// huge answer costs at most `cap` bytes of memory.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> anyhow::Result<Vec<u8>> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        anyhow::bail!("JWKS larger than {cap} bytes");
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            anyhow::bail!("JWKS larger than {cap} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl KeyCache {
    fn lookup(&self, kid: Option<&str>) -> Option<JwksKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.by_kid.len() + self.anonymous.len() == 1 => self
                .anonymous
                .first()
                .or_else(|| self.by_kid.values().next())
                .cloned(),
            None => None,
        }
    }
}

/// The verification key and its single algorithm, for signature keys of
/// type RSA or EC. Symmetric (`oct`) keys are never accepted from a JWKS.
fn verification_key(jwk: &Jwk) -> Option<JwksKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let algorithm = match declared {
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                Some(_) => return None,
            };
            let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).ok()?;
            Some(JwksKey { algorithm, key })
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let algorithm = match (&ec.curve, declared) {
                (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
                (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
                _ => return None,
            };
            let key = DecodingKey::from_ec_components(&ec.x, &ec.y).ok()?;
            Some(JwksKey { algorithm, key })
        }
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::OctetKeyPair(_) => None,
    }
}

/// A 401 that names the failed check only; `detail` (the library's reason,
/// the token's header fields: attacker-controlled) goes to the log.
fn refuse(reason: &'static str, detail: impl std::fmt::Display) -> ApiError {
    tracing::info!(%detail, "token refused: {reason}");
    ApiError::unauthorized(reason)
}

/// Mints an HS256 token for local use.
pub fn mint(
    config: &AuthConfig,
    subject: &str,
    roles: &[String],
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let Some(secret) = config.hs256_key() else {
        anyhow::bail!("no HS256 secret: set auth.hs256_secret, or use --dev for the dev secret");
    };
    if ttl_secs > config.max_token_lifetime_secs {
        anyhow::bail!(
            "a token may live at most auth.max_token_lifetime_secs = {} s",
            config.max_token_lifetime_secs
        );
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: subject.to_string(),
        iss: config.hs256_token_issuer().to_string(),
        aud: config.audience.clone(),
        exp: now + ttl_secs,
        iat: now,
        roles: roles.to_vec(),
        realm_access: None,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
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
        state.auth.verify(token.trim()).await
    }
}
