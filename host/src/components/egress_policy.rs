//! The egress policy an admin approves with an adapter's activation: the
//! `scheme://host:port` entries its requests may reach, and which secrets
//! the host may put into which headers of requests to which entry. It
//! travels with the activation (orders pinned to an activation keep it); the
//! node's config can only narrow it (`deny_hosts`), never widen it.
//!
//! An activation without a policy (the node's own bootstrap, one made before
//! policies existed) falls back to the slot's `allow_hosts`, with any
//! configured secret allowed in any header of an allowed request.

use std::collections::BTreeSet;
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use super::egress::AllowEntry;

/// What an admin approves: the stored, shown and audited form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// `https://host:port` or `http://host:port` (plain http only where an
    /// entry says so). A DNS name resolving to an internal address is
    /// refused whatever the policy says; such an address is reachable only
    /// through an entry naming the IP.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Which secret may be injected where.
    #[serde(default)]
    pub secrets: Vec<SecretBinding>,
    /// Secrets the component may use as HMAC keys (`crypto.hmac-sha256`,
    /// e.g. to check a webhook's signature). The key never leaves the host,
    /// but which keys a component may use is the admin's call, as with
    /// secrets in headers. (Left out of the stored form when empty, so a
    /// policy approved before it existed reads and audits the same.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing: Vec<String>,
}

/// `{{secret:NAME}}` may be replaced only in these headers of requests to
/// this entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBinding {
    pub name: String,
    pub entry: String,
    pub headers: Vec<String>,
}

/// Bounds on what one policy may list (it is checked on every request).
const MAX_ENTRIES: usize = 32;

impl EgressPolicy {
    /// Parses `--secret NAME=ENTRY:HEADER`, e.g.
    /// `psp_api_key=https://api.x.com:443:Authorization`.
    pub fn parse_secret_flag(text: &str) -> Result<SecretBinding, String> {
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=ENTRY:HEADER, got {text:?}"))?;
        let (entry, header) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("expected NAME=ENTRY:HEADER, got {text:?}"))?;
        Ok(SecretBinding {
            name: name.to_string(),
            entry: entry.to_string(),
            headers: vec![header.to_string()],
        })
    }

    /// A policy file: top-level `allow` and `[[secrets]]`, or the same under
    /// `[egress]` (as in a crate's `plugin.toml`).
    pub fn from_file(path: &Path) -> Result<EgressPolicy, String> {
        if !path.is_file() {
            return Err(format!("{}: no such file", path.display()));
        }
        let figment = Figment::from(Toml::file_exact(path));
        let policy = if figment.find_value("egress").is_ok() {
            figment.extract_inner("egress")
        } else {
            figment.extract()
        };
        policy.map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Flags on top of an optional file; None when neither says anything.
    pub fn from_parts(
        file: Option<&Path>,
        flags: &EgressPolicy,
    ) -> Result<Option<EgressPolicy>, String> {
        let mut policy = match file {
            Some(path) => EgressPolicy::from_file(path)?,
            None if flags == &EgressPolicy::default() => return Ok(None),
            None => EgressPolicy::default(),
        };
        policy.allow.extend(flags.allow.iter().cloned());
        policy.secrets.extend(flags.secrets.iter().cloned());
        policy.signing.extend(flags.signing.iter().cloned());
        policy.check()?;
        Ok(Some(policy))
    }

    /// Refuses a policy the host could not enforce exactly: unparsable
    /// entries, a secret bound to an entry the policy does not allow, a
    /// header the host owns.
    pub fn check(&self) -> Result<(), String> {
        let longest = [self.allow.len(), self.secrets.len(), self.signing.len()];
        if longest.into_iter().max().unwrap_or(0) > MAX_ENTRIES {
            return Err(format!(
                "a policy lists at most {MAX_ENTRIES} entries, secrets and signing keys"
            ));
        }
        for name in &self.signing {
            check_secret_name(name)?;
        }
        let allow = parse_entries(&self.allow)?;
        for binding in &self.secrets {
            check_secret_name(&binding.name)?;
            let entry = parse_entry(&binding.entry)?;
            if !allow.contains(&entry) {
                return Err(format!(
                    "secret {} is bound to {}, which the policy does not allow",
                    binding.name, binding.entry
                ));
            }
            if binding.headers.is_empty() {
                return Err(format!("secret {} names no header", binding.name));
            }
            for header in &binding.headers {
                if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err()
                    || super::host_imports::is_host_owned(header)
                {
                    return Err(format!(
                        "secret {} may not go into header {header:?}",
                        binding.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// One line for `plugin list` and logs.
    pub fn summary(&self) -> String {
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|b| format!("{}→{}[{}]", b.name, b.entry, b.headers.join(",")))
            .collect();
        format!(
            "allow [{}] secrets [{}] signing [{}]",
            self.allow.join(", "),
            secrets.join(", "),
            self.signing.join(", ")
        )
    }
}

fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} must be 1..=64 of [A-Za-z0-9_-]"
        ))
    }
}

fn parse_entry(entry: &str) -> Result<AllowEntry, String> {
    AllowEntry::parse(entry)
        .ok_or_else(|| format!("{entry:?} is not scheme://host:port (or host:port for https)"))
}

fn parse_entries(entries: &[String]) -> Result<Vec<AllowEntry>, String> {
    entries.iter().map(|e| parse_entry(e)).collect()
}

/// The policy as the host enforces it on each request.
#[derive(Debug, Default)]
pub struct Egress {
    allow: Vec<AllowEntry>,
    /// The operator's deny-list: wins over any policy.
    deny: Vec<AllowEntry>,
    /// None: no approved policy, any secret in any header (the fallback).
    bindings: Option<Vec<(String, AllowEntry, BTreeSet<String>)>>,
    /// HMAC keys the component may use; None as for `bindings`.
    signing: Option<BTreeSet<String>>,
    /// Harness without a policy: any URL (fixtures use made-up hosts).
    open: bool,
}

impl Egress {
    /// From an approved policy (checked again: a stored one may predate a
    /// tightened check), narrowed by the operator's deny-list.
    pub fn approved(policy: &EgressPolicy, deny: &[String]) -> Result<Egress, String> {
        policy.check()?;
        let bindings = policy
            .secrets
            .iter()
            .map(|b| {
                let headers = b.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
                Ok((b.name.clone(), parse_entry(&b.entry)?, headers))
            })
            .collect::<Result<_, String>>()?;
        Ok(Egress {
            allow: parse_entries(&policy.allow)?,
            deny: deny_entries(deny),
            bindings: Some(bindings),
            signing: Some(policy.signing.iter().cloned().collect()),
            open: false,
        })
    }

    /// No approved policy: the slot's `allow_hosts` (unparsable entries
    /// allow nothing), any secret anywhere allowed.
    pub fn node_config(allow_hosts: &[String], deny: &[String]) -> Egress {
        Egress {
            allow: allow_hosts
                .iter()
                .filter_map(|e| AllowEntry::parse(e))
                .collect(),
            deny: deny_entries(deny),
            bindings: None,
            signing: None,
            open: false,
        }
    }

    /// A stored policy that no longer passes the checks: nothing allowed.
    pub fn nothing() -> Egress {
        Egress {
            bindings: Some(Vec::new()),
            signing: Some(BTreeSet::new()),
            ..Egress::default()
        }
    }

    /// The harness without a policy: every URL, every secret name.
    pub fn open() -> Egress {
        Egress {
            open: true,
            ..Egress::default()
        }
    }

    /// The same refusal text the node and the harness give.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let (scheme, host) = (url.scheme(), url.host_str().unwrap_or(""));
        let port = url.port_or_known_default().unwrap_or(0);
        if self.deny.iter().any(|e| e.allows(url)) {
            return Err(format!(
                "{scheme}://{host}:{port} is on this node's deny-list"
            ));
        }
        if self.open || self.allow.iter().any(|e| e.allows(url)) {
            return Ok(());
        }
        Err(format!(
            "{scheme}://{host}:{port} is not in this adapter's egress policy (plain http needs an http:// entry)"
        ))
    }

    /// Whether secret `name` may go into `header` of a request to `url`.
    pub fn check_secret(&self, name: &str, url: &reqwest::Url, header: &str) -> Result<(), String> {
        let Some(bindings) = &self.bindings else {
            return Ok(());
        };
        let header = header.to_ascii_lowercase();
        let bound = bindings
            .iter()
            .any(|(n, entry, headers)| n == name && entry.allows(url) && headers.contains(&header));
        if bound {
            return Ok(());
        }
        if !bindings.iter().any(|(n, _, _)| n == name) {
            return Err(format!(
                "unknown secret {name}: the egress policy binds no secret of that name"
            ));
        }
        Err(format!(
            "secret {name} is not bound to header {header} of {}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        ))
    }

    /// Whether the component may use secret `name` as an HMAC key.
    pub fn check_signing(&self, name: &str) -> Result<(), String> {
        match &self.signing {
            Some(names) if !names.contains(name) => Err(format!(
                "secret {name} is not in this adapter's signing list"
            )),
            _ => Ok(()),
        }
    }

    /// Whether this is an approved policy (its bindings name the secrets).
    pub fn bound_names(&self) -> Option<BTreeSet<&str>> {
        self.bindings
            .as_ref()
            .map(|b| b.iter().map(|(n, _, _)| n.as_str()).collect())
    }
}

fn deny_entries(deny: &[String]) -> Vec<AllowEntry> {
    deny.iter().filter_map(|e| AllowEntry::parse(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> reqwest::Url {
        reqwest::Url::parse(text).unwrap()
    }

    fn policy() -> EgressPolicy {
        EgressPolicy {
            allow: vec!["https://a.test:443".into(), "https://b.test:443".into()],
            secrets: vec![EgressPolicy::parse_secret_flag(
                "psp_api_key=https://a.test:443:Authorization",
            )
            .unwrap()],
            signing: vec!["webhook_secret".into()],
        }
    }

    #[test]
    fn only_listed_signing_keys_serve_the_hmac_import() {
        let egress = Egress::approved(&policy(), &[]).unwrap();
        assert!(egress.check_signing("webhook_secret").is_ok());
        let refused = egress.check_signing("psp_api_key");
        assert!(refused.is_err_and(|e| e.contains("not in this adapter's signing list")));
        assert!(Egress::nothing().check_signing("webhook_secret").is_err());
        // No approved policy (the node config's fallback): any name.
        assert!(Egress::node_config(&[], &[]).check_signing("x").is_ok());
        let bad = EgressPolicy {
            signing: vec!["bad name".into()],
            ..policy()
        };
        assert!(bad.check().is_err());
        // Empty, it is left out of the stored form.
        let plain = EgressPolicy {
            signing: vec![],
            ..policy()
        };
        let stored = serde_json::to_value(&plain).unwrap();
        assert!(stored.get("signing").is_none(), "{stored}");
    }

    #[test]
    fn a_secret_goes_only_to_its_entry_and_header() {
        let egress = Egress::approved(&policy(), &[]).unwrap();
        let a = url("https://a.test/v1");
        let b = url("https://b.test/v1");
        assert!(egress.check_url(&a).is_ok());
        assert!(egress.check_url(&url("https://c.test/v1")).is_err());
        assert!(egress
            .check_secret("psp_api_key", &a, "authorization")
            .is_ok());
        assert!(egress
            .check_secret("psp_api_key", &b, "Authorization")
            .is_err());
        assert!(egress.check_secret("psp_api_key", &a, "X-Other").is_err());
        let unknown = egress.check_secret("psp_api_kye", &a, "Authorization");
        assert!(unknown.is_err_and(|e| e.starts_with("unknown secret psp_api_kye")));
    }

    #[test]
    fn the_deny_list_narrows_and_bad_policies_are_refused() {
        let egress = Egress::approved(&policy(), &["b.test:443".into()]).unwrap();
        assert!(egress
            .check_url(&url("https://b.test/"))
            .is_err_and(|e| e.contains("deny-list")));
        let mut bad = policy();
        bad.secrets[0].entry = "https://c.test:443".into();
        assert!(bad.check().is_err());
        let mut bad = policy();
        bad.secrets[0].headers = vec!["Host".into()];
        assert!(bad.check().is_err());
        let mut bad = policy();
        bad.allow.push("ftp://x:21".into());
        assert!(bad.check().is_err());
        assert!(EgressPolicy::parse_secret_flag("no-equals").is_err());
    }
}
