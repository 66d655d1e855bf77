//! Scripted HTTP for the harness: a fixture case's exchanges, replayed in
//! order instead of the network, with every mismatch between what the
//! component sent and what the case expects recorded as a problem. The
//! host's `http` import answers from a script when a call has one, so this
//! sits below both the runtime and the harness.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::bindings::adapter::paynode::psp_adapter::http;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    #[serde(default)]
    pub expect: Option<ExpectedRequest>,
    pub respond: Respond,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRequest {
    pub method: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, rename = "bodyContains")]
    pub body_contains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Respond {
    Error {
        error: String,
    },
    Response {
        status: u16,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: String,
    },
}

/// Replays scripted exchanges instead of the network, recording mismatches;
/// holds the fixture's test secrets for the `crypto` import.
#[derive(Clone, Default)]
pub struct HttpScript {
    inner: Arc<Mutex<ScriptState>>,
    secrets: Arc<BTreeMap<String, SecretString>>,
}

#[derive(Default)]
struct ScriptState {
    queue: VecDeque<Exchange>,
    problems: Vec<String>,
}

impl HttpScript {
    pub fn new(exchanges: &[Exchange]) -> Self {
        HttpScript {
            inner: Arc::new(Mutex::new(ScriptState {
                queue: exchanges.iter().cloned().collect(),
                problems: Vec::new(),
            })),
            secrets: Arc::default(),
        }
    }

    /// The fixture file's test secrets: a harness run never signs with the
    /// node's own.
    pub fn with_secrets(mut self, secrets: &BTreeMap<String, String>) -> Self {
        self.secrets = Arc::new(
            secrets
                .iter()
                .map(|(name, value)| (name.clone(), SecretString::from(value.clone())))
                .collect(),
        );
        self
    }

    pub fn secret(&self, name: &str) -> Option<SecretString> {
        self.secrets.get(name).cloned()
    }

    pub fn answer(&self, request: &http::Request) -> Result<http::Response, http::HttpError> {
        let mut state = self.inner.lock().expect("script lock");
        let Some(exchange) = state.queue.pop_front() else {
            state.problems.push(format!(
                "unexpected request {} {}",
                request.method, request.url
            ));
            return Err(http::HttpError::Refused("no scripted exchange left".into()));
        };
        if let Some(expected) = &exchange.expect {
            let problems = mismatches(expected, request);
            state.problems.extend(problems);
        }
        match exchange.respond {
            Respond::Error { error } => Err(match error.as_str() {
                "timeout" => http::HttpError::Timeout,
                "connect-failed" => http::HttpError::ConnectFailed("scripted".into()),
                "refused" => http::HttpError::Refused("scripted".into()),
                _ => http::HttpError::FailedAfterSend("scripted".into()),
            }),
            Respond::Response {
                status,
                headers,
                body,
            } => Ok(http::Response {
                status,
                headers: headers.into_iter().collect(),
                body: body.into_bytes(),
            }),
        }
    }

    /// Records a problem found outside the script (a refused request).
    pub fn note(&self, problem: String) {
        self.inner
            .lock()
            .expect("script lock")
            .problems
            .push(problem);
    }

    pub(super) fn finish(&self) -> Vec<String> {
        let mut state = self.inner.lock().expect("script lock");
        let mut problems = std::mem::take(&mut state.problems);
        if !state.queue.is_empty() {
            problems.push(format!(
                "{} scripted exchange(s) never requested",
                state.queue.len()
            ));
        }
        problems
    }
}

fn mismatches(expected: &ExpectedRequest, request: &http::Request) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(method) = &expected.method {
        if !method.eq_ignore_ascii_case(&request.method) {
            problems.push(format!("method: expected {method}, got {}", request.method));
        }
    }
    if let Some(url) = &expected.url {
        if url != &request.url {
            problems.push(format!("url: expected {url}, got {}", request.url));
        }
    }
    for (name, value) in &expected.headers {
        let found = request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        if found != Some(value) {
            problems.push(format!("header {name}: expected {value:?}, got {found:?}"));
        }
    }
    let body = String::from_utf8_lossy(&request.body);
    for needle in &expected.body_contains {
        if !body.contains(needle.as_str()) {
            problems.push(format!("body does not contain {needle:?}: {body}"));
        }
    }
    problems
}
