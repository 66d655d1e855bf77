//! The Idempotency-Keys this node is working on: queued for a group, or in
//! a group whose transaction has not ended.
//!
//! A second request with such a key is refused with 409 at once, without
//! touching the database: two requests with one key never share a group
//! (inside one transaction the advisory lock is re-entrant, so the database
//! could not tell them apart) and never wait for each other. Another node's
//! key is caught by the database instead: each group try-locks its keys.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
}

/// A key held by one request; released when dropped.
pub struct Claim {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl InFlight {
    /// Claims `(client, key)`; `None` while another request holds it.
    pub fn claim(&self, client_id: &str, key: &str) -> Option<Claim> {
        let key = (client_id.to_string(), key.to_string());
        let fresh = self.keys.lock().expect("in-flight set").insert(key.clone());
        fresh.then(|| Claim {
            keys: self.keys.clone(),
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.lock().expect("in-flight set").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Never panic in drop: a poisoned set only means a panic elsewhere.
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_claimed_once_until_released() {
        let in_flight = InFlight::default();
        let claim = in_flight.claim("client-a", "k").expect("first claim");
        assert!(in_flight.claim("client-a", "k").is_none());
        // Keys are scoped per client.
        let other = in_flight.claim("client-b", "k").expect("another client");
        drop(claim);
        assert!(in_flight.claim("client-a", "k").is_some());
        drop(other);
        assert!(in_flight.is_empty());
    }
}
