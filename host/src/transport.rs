//! Transport security of the node's own connections: Kafka, Postgres and
//! Redis. A plaintext connection carries payment data and credentials in the
//! clear, so outside dev mode each one is a warning at start, and with
//! `security.require_tls` the node refuses to start and names them all.

use anyhow::bail;

use crate::config::Config;

/// A connection the config leaves unencrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// `kafka`, `postgres` or `redis`.
    pub connection: &'static str,
    /// Which setting makes it plaintext and what would not.
    pub reason: String,
}

/// Every plaintext connection of `config`.
pub fn plaintext_connections(config: &Config) -> Vec<Plaintext> {
    let mut found = Vec::new();
    let protocol = config.kafka.security_protocol.to_ascii_uppercase();
    if matches!(protocol.as_str(), "PLAINTEXT" | "SASL_PLAINTEXT") {
        found.push(Plaintext {
            connection: "kafka",
            reason: format!("kafka.security_protocol is {protocol} (use SSL or SASL_SSL)"),
        });
    }
    if !postgres_uses_tls(&config.database.url) {
        found.push(Plaintext {
            connection: "postgres",
            reason: "database.url has no sslmode=require, verify-ca or verify-full".into(),
        });
    }
    if !redis_uses_tls(&config.redis.url) {
        found.push(Plaintext {
            connection: "redis",
            reason: "redis.url is redis:// (use rediss://)".into(),
        });
    }
    found
}

/// Warns about (outside dev mode) or, with `security.require_tls`, refuses
/// plaintext connections. Runs before any connection is opened.
pub fn enforce(config: &Config) -> anyhow::Result<()> {
    let plaintext = plaintext_connections(config);
    if plaintext.is_empty() {
        return Ok(());
    }
    if config.security.require_tls {
        let named: Vec<String> = plaintext
            .iter()
            .map(|p| format!("{}: {}", p.connection, p.reason))
            .collect();
        bail!(
            "security.require_tls is set but these connections are plaintext: {}",
            named.join("; ")
        );
    }
    if !config.auth.dev {
        for p in &plaintext {
            tracing::warn!(
                connection = p.connection,
                reason = %p.reason,
                "plaintext {} connection: traffic and credentials travel unencrypted \
                 (set security.require_tls = true to refuse)",
                p.connection
            );
        }
    }
    Ok(())
}

/// libpq's `sslmode` values that encrypt for sure (`prefer` may fall back to
/// plaintext silently). A URL that does not parse counts as plaintext.
fn postgres_uses_tls(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    parsed.query_pairs().any(|(key, value)| {
        (key == "sslmode" || key == "ssl-mode")
            && matches!(
                value.to_ascii_lowercase().as_str(),
                "require" | "verify-ca" | "verify-full" | "verify_ca" | "verify_identity"
            )
    })
}

/// `rediss://` is TLS; a Unix socket never leaves the machine.
fn redis_uses_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default();
    matches!(scheme, "rediss" | "redis+unix" | "unix")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(config: &Config) -> Vec<&'static str> {
        plaintext_connections(config)
            .into_iter()
            .map(|p| p.connection)
            .collect()
    }

    #[test]
    fn plaintext_settings_are_named() {
        let mut config = Config::default();
        assert_eq!(connections(&config), ["kafka", "postgres", "redis"]);
        config.kafka.security_protocol = "sasl_ssl".into();
        config.database.url = "postgres://u:p@pg/paynode?sslmode=verify-full".into();
        config.redis.url = "rediss://:p@redis:6380".into();
        assert!(connections(&config).is_empty());
        config.kafka.security_protocol = "SASL_PLAINTEXT".into();
        config.database.url = "postgres://u:p@pg/paynode?sslmode=prefer".into();
        assert_eq!(connections(&config), ["kafka", "postgres"]);
    }

    #[test]
    fn require_tls_refuses_and_names_every_connection() {
        let mut config = Config::default();
        config.auth.dev = true;
        enforce(&config).unwrap();
        config.security.require_tls = true;
        let refusal = format!("{:#}", enforce(&config).unwrap_err());
        for named in ["security.require_tls", "kafka", "postgres", "redis"] {
            assert!(refusal.contains(named), "{refusal}");
        }
    }
}
