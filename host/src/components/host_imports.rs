//! What a guest may ask of the host: outbound HTTP (adapters only, through an
//! allow-list with secret injection), a capped delay, and log lines. Also the
//! per-store memory limiter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use wasmtime::ResourceLimiter;

use super::bindings::adapter::paynode::psp_adapter::{http, log, types};
use super::egress;
use super::egress_policy::Egress;
use super::scrub;

/// Outbound HTTP policy of one adapter slot.
#[derive(Clone)]
pub struct HttpPolicy {
    /// [`egress::egress_client`]: no redirects, checked DNS.
    pub client: reqwest::Client,
    /// Where requests may go and which secret may go where: the
    /// activation's approved policy, or the node config's fallback.
    pub egress: Arc<Egress>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub secrets: Arc<BTreeMap<String, SecretString>>,
    /// Harness only: a secret name not in `secrets` becomes `fake-<name>`
    /// (fixtures assert where secrets go without seeing real ones).
    pub fake_secrets: bool,
    /// Requests refused by the allow-list (for metrics and tests).
    pub refused: Arc<AtomicU64>,
}

/// Upper bound on HTTP requests one call may make: an adapter that loops on
/// `send` is stopped by this, not by the PSP.
const MAX_HTTP_REQUESTS_PER_CALL: u32 = 8;

/// The data of one store: lives exactly as long as one component call.
pub struct HostState {
    pub limiter: MemoryLimiter,
    pub http: Option<HttpPolicy>,
    pub script: Option<super::http_script::HttpScript>,
    pub max_delay_ms: u32,
    /// Names the plugin in log lines the guest writes.
    pub plugin: String,
    pub trace_id: String,
    pub http_requests: u32,
    /// Set once a request has been handed to the network: from then on a
    /// failure of the call may hide a PSP-side effect. Shared, because a
    /// call cut off by the wall-clock cap drops its store.
    pub request_left: Arc<AtomicBool>,
    /// Milliseconds spent awaiting host calls (not the guest's CPU time).
    pub host_wait_ms: u64,
}

impl HostState {
    pub fn new(memory_bytes: usize, plugin: &str) -> Self {
        HostState {
            limiter: MemoryLimiter::new(memory_bytes),
            http: None,
            script: None,
            max_delay_ms: 0,
            plugin: plugin.to_string(),
            trace_id: String::new(),
            http_requests: 0,
            request_left: Arc::new(AtomicBool::new(false)),
            host_wait_ms: 0,
        }
    }
}

/// Core instances one component may create in a store. A component made by
/// `wit-component` has one to four (the guest module, shims, fixups); a
/// component with hundreds would take a large share of the instance pool
/// with every call. The pooling allocator enforces the same bound when the
/// component is compiled (`runtime::MAX_CORE_INSTANCES_PER_COMPONENT`).
pub const MAX_INSTANCES_PER_STORE: usize = 16;
/// Linear memories and tables one store may create (across all instances).
pub const MAX_MEMORIES_PER_STORE: usize = 4;
pub const MAX_TABLES_PER_STORE: usize = 8;
/// Elements one table may grow to (function tables of real guests hold a
/// few hundred entries).
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Refuses memory growth past the cap, counted across every linear memory
/// of the store (a component may define several, one per core instance),
/// and remembers the peak of that total.
pub struct MemoryLimiter {
    pub max_bytes: usize,
    /// Bytes of all linear memories of the store now.
    pub total_bytes: usize,
    pub peak_bytes: usize,
    pub hit: bool,
}

impl MemoryLimiter {
    pub fn new(max_bytes: usize) -> Self {
        MemoryLimiter {
            max_bytes,
            total_bytes: 0,
            peak_bytes: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    /// Called with `current == 0` when a memory is created, so the total
    /// covers initial sizes as well as growth.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .total_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.max_bytes {
            self.hit = true;
            // Trap rather than return -1: a guest allocator that ignores a
            // failed grow must not limp on.
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes reached (all memories of the call would hold {total})",
                self.max_bytes
            )));
        }
        self.total_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_STORE
    }
}

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        let Some(policy) = self.http.clone() else {
            return Err(http::HttpError::Refused(
                "this slot has no HTTP access".into(),
            ));
        };
        self.http_requests += 1;
        if self.http_requests > MAX_HTTP_REQUESTS_PER_CALL {
            return Err(http::HttpError::Refused(format!(
                "more than {MAX_HTTP_REQUESTS_PER_CALL} requests in one call"
            )));
        }
        let prepared = match prepare(&policy, request) {
            Ok(prepared) => prepared,
            Err(reason) => {
                policy.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(script) = &self.script {
                    script.note(format!("the node would refuse this request: {reason}"));
                } else {
                    crate::metrics::egress_refused(&self.plugin);
                    tracing::warn!(plugin = %self.plugin, %reason, "adapter HTTP request refused");
                }
                return Err(http::HttpError::Refused(reason));
            }
        };
        // The harness answers from its script what passed the same checks.
        if let Some(script) = &self.script {
            return script.answer(&prepared.as_request());
        }
        let started = std::time::Instant::now();
        self.request_left.store(true, Ordering::SeqCst);
        let result = execute(&policy, prepared).await;
        self.host_wait_ms += started.elapsed().as_millis() as u64;
        if let Err(http::HttpError::Refused(reason)) = &result {
            policy.refused.fetch_add(1, Ordering::Relaxed);
            crate::metrics::egress_refused(&self.plugin);
            tracing::warn!(plugin = %self.plugin, %reason, "adapter HTTP request refused");
        }
        result
    }

    async fn delay(&mut self, ms: u32) {
        let ms = ms.min(self.max_delay_ms);
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
        self.host_wait_ms += u64::from(ms);
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let no_secrets = BTreeMap::new();
        let secrets = self
            .http
            .as_ref()
            .map_or(&no_secrets, |p| p.secrets.as_ref());
        let message = scrub::guest_text(&message, secrets);
        match level {
            log::Level::Debug => {
                tracing::debug!(plugin = %self.plugin, traceId = %self.trace_id, "{message}")
            }
            log::Level::Info => {
                tracing::info!(plugin = %self.plugin, traceId = %self.trace_id, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(plugin = %self.plugin, traceId = %self.trace_id, "{message}")
            }
            log::Level::Error => {
                tracing::error!(plugin = %self.plugin, traceId = %self.trace_id, "{message}")
            }
        }
        Ok(())
    }
}

struct Prepared {
    method: reqwest::Method,
    url: reqwest::Url,
    /// As the guest wrote it (what a fixture's `url` compares with).
    url_text: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Prepared {
    fn as_request(&self) -> http::Request {
        http::Request {
            method: self.method.to_string(),
            url: self.url_text.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

/// Whether the host, not the adapter, sets this header.
pub fn is_host_owned(name: &str) -> bool {
    HOST_OWNED_HEADERS.contains(&name.to_ascii_lowercase().as_str())
}

/// Headers the host sets (or the connection owns): a guest setting `Host`
/// could reach another virtual host than the allow-list names, and
/// hop-by-hop headers could smuggle a second request.
const HOST_OWNED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Checks the egress policy and headers and injects secrets where the
/// policy binds them. Nothing is sent on error. The harness runs the same
/// checks, so a fixture fails exactly where the node would refuse.
fn prepare(policy: &HttpPolicy, request: http::Request) -> Result<Prepared, String> {
    let url = reqwest::Url::parse(&request.url).map_err(|e| format!("bad url: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme {} not allowed", url.scheme()));
    }
    url.host_str().ok_or("url has no host")?;
    url.port_or_known_default().ok_or("url has no port")?;
    policy.egress.check_url(&url)?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("bad method {}", request.method))?;
    if let Some((name, _)) = request.headers.iter().find(|(name, _)| is_host_owned(name)) {
        return Err(format!("header {name} is set by the host, not the adapter"));
    }
    let headers = request
        .headers
        .into_iter()
        .map(|(name, value)| {
            let value = inject_secrets(&value, |secret| {
                policy.egress.check_secret(secret, &url, &name)?;
                policy.secret(secret)
            })?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Prepared {
        method,
        url,
        url_text: request.url,
        headers,
        body: request.body,
    })
}

impl HttpPolicy {
    fn secret(&self, name: &str) -> Result<String, String> {
        match self.secrets.get(name) {
            Some(secret) => Ok(secret.expose_secret().to_string()),
            None if self.fake_secrets => Ok(format!("fake-{name}")),
            None => Err(format!(
                "unknown secret {name}: not configured on this node"
            )),
        }
    }
}

/// Replaces every `{{secret:NAME}}` with what `lookup` gives for NAME.
pub fn inject_secrets(
    value: &str,
    mut lookup: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("{{secret:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{{secret:".len()..];
        let end = after.find("}}").ok_or("unterminated secret placeholder")?;
        out.push_str(&lookup(&after[..end])?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

async fn execute(
    policy: &HttpPolicy,
    prepared: Prepared,
) -> Result<http::Response, http::HttpError> {
    let mut builder = policy
        .client
        .request(prepared.method, prepared.url)
        .timeout(policy.timeout)
        .body(prepared.body);
    for (name, value) in &prepared.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.map_err(classify_send_error)?;
    let status = response.status().as_u16();
    // A PSP that echoes an injected secret (an error quoting the
    // Authorization header) must not hand it to the guest.
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let value = scrub::text(value.to_str().ok()?, &policy.secrets);
            Some((name.to_string(), value))
        })
        .collect();
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(classify_send_error)? {
        if body.len() + chunk.len() > policy.max_response_bytes {
            return Err(http::HttpError::FailedAfterSend(format!(
                "response larger than {} bytes",
                policy.max_response_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(http::Response {
        status,
        headers,
        body: scrub::bytes(&body, &policy.secrets),
    })
}

fn classify_send_error(error: reqwest::Error) -> http::HttpError {
    if egress::is_forbidden_address(&error) {
        // Refused by the resolver: nothing was sent.
        http::HttpError::Refused(format!("{error:#}"))
    } else if error.is_timeout() {
        http::HttpError::Timeout
    } else if error.is_connect() {
        http::HttpError::ConnectFailed(error.to_string())
    } else {
        http::HttpError::FailedAfterSend(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_store() {
        let mut limiter = MemoryLimiter::new(32 << 20);
        // Two memories created at 12 MiB each: 24 MiB in all.
        assert!(limiter.memory_growing(0, 12 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 12 << 20, None).unwrap());
        // Growing one to 24 MiB would make 36 MiB in all: refused,
        // although 24 MiB alone is under the cap.
        assert!(limiter.memory_growing(12 << 20, 24 << 20, None).is_err());
        assert!(limiter.hit);
        assert!(limiter.memory_growing(12 << 20, 16 << 20, None).unwrap());
        assert_eq!(limiter.total_bytes, 28 << 20);
        assert_eq!(limiter.peak_bytes, 28 << 20);
    }

    #[test]
    fn secrets_are_injected_and_unknown_ones_refused() {
        let secrets: BTreeMap<String, SecretString> =
            BTreeMap::from([("psp_api_key".to_string(), "sk_live".into())]);
        let lookup = |name: &str| {
            secrets
                .get(name)
                .map(|s| s.expose_secret().to_string())
                .ok_or_else(|| format!("unknown secret {name}"))
        };
        assert_eq!(
            inject_secrets("Bearer {{secret:psp_api_key}}", lookup).unwrap(),
            "Bearer sk_live"
        );
        assert_eq!(inject_secrets("plain", lookup).unwrap(), "plain");
        assert!(inject_secrets("{{secret:other}}", lookup).is_err());
        assert!(inject_secrets("{{secret:psp_api_key", lookup).is_err());
    }

    use axum::response::Redirect;
    use axum::routing::get;
    use std::net::SocketAddr;

    /// A local server counting the requests that reach `/target`.
    async fn serve(redirect_to: Option<String>) -> (SocketAddr, Arc<AtomicU64>) {
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let mut app = axum::Router::new().route(
            "/target",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "reached"
            }),
        );
        if let Some(location) = redirect_to {
            app = app.route(
                "/pay",
                get(move || async move { Redirect::temporary(&location) }),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, hits)
    }

    fn guest(allow: &[String]) -> (HostState, Arc<AtomicU64>) {
        let refused = Arc::new(AtomicU64::new(0));
        let mut state = HostState::new(1 << 20, "test-adapter");
        state.http = Some(HttpPolicy {
            client: egress::egress_client(),
            egress: Arc::new(Egress::node_config(allow, &[])),
            timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            secrets: Arc::default(),
            fake_secrets: false,
            refused: refused.clone(),
        });
        (state, refused)
    }

    fn get_request(url: String, headers: Vec<(String, String)>) -> http::Request {
        http::Request {
            method: "GET".into(),
            url,
            headers,
            body: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_redirect_goes_back_to_the_guest_and_is_never_followed() {
        let (target, hits) = serve(None).await;
        let (psp, _) = serve(Some(format!("http://{target}/target"))).await;
        // Even with the redirect's target allowed, the host does not follow.
        let allow = [format!("http://{psp}"), format!("http://{target}")];
        let (mut state, _) = guest(&allow);
        let request = get_request(format!("http://{psp}/pay"), Vec::new());
        let response = http::Host::send(&mut state, request).await.unwrap();
        assert_eq!(response.status, 307);
        assert_eq!(hits.load(Ordering::SeqCst), 0, "redirect followed");
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_the_ip_is_listed() {
        let (psp, hits) = serve(None).await;
        let port = psp.port();
        let (mut state, refused) = guest(&[format!("http://localhost:{port}")]);
        let request = get_request(format!("http://localhost:{port}/target"), Vec::new());
        let result = http::Host::send(&mut state, request).await;
        assert!(
            matches!(&result, Err(http::HttpError::Refused(_))),
            "{result:?}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        assert_eq!(refused.load(Ordering::SeqCst), 1);

        // Named literally (and with its http:// scheme), the IP is reachable.
        let (mut state, _) = guest(&[format!("http://127.0.0.1:{port}")]);
        let request = get_request(format!("http://127.0.0.1:{port}/target"), Vec::new());
        let response = http::Host::send(&mut state, request).await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn plain_http_and_host_owned_headers_are_refused() {
        let (psp, hits) = serve(None).await;
        // An entry without a scheme means https.
        let (mut state, _) = guest(&[psp.to_string()]);
        let request = get_request(format!("http://{psp}/target"), Vec::new());
        let result = http::Host::send(&mut state, request).await;
        assert!(
            matches!(&result, Err(http::HttpError::Refused(_))),
            "{result:?}"
        );
        let (mut state, _) = guest(&[format!("http://{psp}")]);
        for header in ["Host", "transfer-encoding", "Connection"] {
            let request = get_request(
                format!("http://{psp}/target"),
                vec![(header.to_string(), "x".to_string())],
            );
            let result = http::Host::send(&mut state, request).await;
            assert!(
                matches!(&result, Err(http::HttpError::Refused(_))),
                "{header}: {result:?}"
            );
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }
}
