//! Where an adapter's HTTP requests may go: allow-list entries, the
//! addresses a DNS name may resolve to, and the one client that enforces
//! both (no redirects, no proxy, a checking resolver).
//!
//! An entry is `https://host:port`, `host:port` (https too) or
//! `http://host:port`: plain http only where an entry says so. A DNS name
//! resolving to a loopback, private, link-local (169.254.169.254, the cloud
//! metadata service), shared, multicast or unspecified address is refused;
//! such an address is reachable only through an entry naming that IP
//! literally. The checking happens inside the client's resolver, so the
//! connection goes to exactly the addresses that were checked (no DNS
//! rebinding between check and connect).

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// One parsed allow-list entry.
#[derive(Debug, PartialEq, Eq)]
pub struct AllowEntry {
    pub scheme: String,
    /// As `Url::host_str` writes it (IPv6 in brackets, lower case).
    pub host: String,
    pub port: u16,
}

impl AllowEntry {
    /// `None` for an entry that names no host and port.
    pub fn parse(entry: &str) -> Option<AllowEntry> {
        let with_scheme = if entry.contains("://") {
            entry.to_string()
        } else {
            format!("https://{entry}")
        };
        let url = reqwest::Url::parse(&with_scheme).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.path() != "/" {
            return None;
        }
        Some(AllowEntry {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_string(),
            port: url.port_or_known_default()?,
        })
    }

    pub fn allows(&self, url: &reqwest::Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
    }
}

/// Addresses a DNS name may not lead to.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_forbidden_v4(v4),
            None => is_forbidden_v6(v6),
        },
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [first, second, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        // 0.0.0.0/8 ("this network") and 100.64.0.0/10 (carrier-grade NAT).
        || first == 0
        || (first == 100 && (64..128).contains(&second))
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
}

/// The resolver's refusal; found again in the error chain to report the
/// request as refused rather than as a connect failure.
#[derive(Debug)]
pub struct ForbiddenAddress {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

impl fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves only to forbidden addresses {:?}",
            self.name, self.addresses
        )
    }
}

impl Error for ForbiddenAddress {}

/// Whether `error` (or one of its sources) is a [`ForbiddenAddress`].
pub fn is_forbidden_address(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<ForbiddenAddress>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// System DNS, keeping only addresses a DNS name may lead to.
struct CheckedResolver;

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(resolve_checked(name.as_str().to_string()))
    }
}

async fn resolve_checked(name: String) -> Result<Addrs, Box<dyn Error + Send + Sync>> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
    let allowed: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|addr| !is_forbidden(addr.ip()))
        .collect();
    if allowed.is_empty() {
        let addresses = resolved.iter().map(SocketAddr::ip).collect();
        return Err(Box::new(ForbiddenAddress { name, addresses }));
    }
    Ok(Box::new(allowed.into_iter()))
}

/// The client adapters' requests go through: a 3xx goes back to the guest
/// as a response (a redirect must not lead past the allow-list), no proxy
/// from the environment (it would resolve names unchecked), the checking
/// resolver.
pub fn egress_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckedResolver))
        .pool_max_idle_per_host(64)
        .build()
        .expect("reqwest client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_scheme_or_mean_https() {
        let entry = |scheme: &str, host: &str, port| AllowEntry {
            scheme: scheme.into(),
            host: host.into(),
            port,
        };
        assert_eq!(
            AllowEntry::parse("api.stripe.com:443"),
            Some(entry("https", "api.stripe.com", 443))
        );
        assert_eq!(
            AllowEntry::parse("https://api.stripe.com"),
            Some(entry("https", "api.stripe.com", 443))
        );
        assert_eq!(
            AllowEntry::parse("http://127.0.0.1:8080"),
            Some(entry("http", "127.0.0.1", 8080))
        );
        assert_eq!(AllowEntry::parse("ftp://host:21"), None);
        assert_eq!(AllowEntry::parse("https://host:443/path"), None);
        let http = AllowEntry::parse("http://127.0.0.1:8080").unwrap();
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        assert!(http.allows(&url("http://127.0.0.1:8080/v1")));
        assert!(!http.allows(&url("https://127.0.0.1:8080/v1")));
        let https = AllowEntry::parse("127.0.0.1:8080").unwrap();
        assert!(!https.allows(&url("http://127.0.0.1:8080/v1")));
    }

    #[test]
    fn internal_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip} allowed");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip} forbidden");
        }
    }
}
