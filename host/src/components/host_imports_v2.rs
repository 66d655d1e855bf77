//! The host imports of psp-adapter 2.0.0. `http` and `log` are v1's
//! interfaces under a new package version: their records are converted and
//! served by the v1 implementation, so both versions get the same
//! allow-list, secret injection and caps. `crypto` is new.

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use super::bindings::adapter::paynode::psp_adapter as v1;
use super::bindings::adapter_v2::paynode::psp_adapter::{
    crypto, http, log, notifications, refunds,
};
use super::host_imports::HostState;

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        let request = v1::http::Request {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
        };
        match v1::http::Host::send(self, request).await {
            Ok(response) => Ok(http::Response {
                status: response.status,
                headers: response.headers,
                body: response.body,
            }),
            Err(error) => Err(match error {
                v1::http::HttpError::Refused(why) => http::HttpError::Refused(why),
                v1::http::HttpError::ConnectFailed(why) => http::HttpError::ConnectFailed(why),
                v1::http::HttpError::Timeout => http::HttpError::Timeout,
                v1::http::HttpError::FailedAfterSend(why) => http::HttpError::FailedAfterSend(why),
            }),
        }
    }

    async fn delay(&mut self, ms: u32) {
        v1::http::Host::delay(self, ms).await
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Debug => v1::log::Level::Debug,
            log::Level::Info => v1::log::Level::Info,
            log::Level::Warn => v1::log::Level::Warn,
            log::Level::Error => v1::log::Level::Error,
        };
        v1::log::Host::write(self, level, message)
    }
}

impl refunds::Host for HostState {}

impl notifications::Host for HostState {}

impl crypto::Host for HostState {
    /// The key stays in the host: the guest gets only the MAC, and only
    /// under a key its approved policy lists for signing. Harness runs use
    /// the fixture's own test secrets, never the node's.
    fn hmac_sha256(
        &mut self,
        secret_name: String,
        message: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        if let Some(Err(refused)) = self
            .http
            .as_ref()
            .map(|p| p.egress.check_signing(&secret_name))
        {
            return Ok(Err(refused));
        }
        let secret = match (&self.script, &self.http) {
            (Some(script), _) => script.secret(&secret_name),
            (None, Some(policy)) => policy.secrets.get(&secret_name).cloned(),
            (None, None) => None,
        };
        let Some(secret) = secret else {
            return Ok(Err(format!("no secret named {secret_name}")));
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(&message);
        Ok(Ok(mac.finalize().into_bytes().to_vec()))
    }
}
