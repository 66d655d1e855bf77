//! Echo scrubbing: the values of host secrets never reach a guest or a
//! record. The host injects secrets into adapter requests (`{{secret:NAME}}`);
//! a PSP that echoes one back (an error body quoting the `Authorization`
//! header, a debug header) would otherwise hand it to the guest, which could
//! copy it into an outcome message (stored in `psp_attempts`, shown by
//! `GET /api/v1/payments/{id}`) or a log line.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

/// What a secret's value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Longest guest text the host records: outcome and failure messages, give-up
/// reasons and log lines. A message is for a person reading an order or a
/// log; 512 characters hold any PSP's error sentence, while a guest cannot
/// fill `psp_attempts` rows or the log pipeline with whole response bodies.
pub const MAX_GUEST_TEXT_CHARS: usize = 512;

/// The byte strings to scrub for each secret: its value and, when they
/// differ, its JSON-escaped form (how a JSON error body quotes it).
fn needles(secrets: &BTreeMap<String, SecretString>) -> Vec<Vec<u8>> {
    let mut needles = Vec::new();
    for secret in secrets.values() {
        let value = secret.expose_secret();
        if value.is_empty() {
            continue;
        }
        needles.push(value.as_bytes().to_vec());
        let quoted = serde_json::to_string(value).expect("a string serializes");
        let escaped = &quoted[1..quoted.len() - 1];
        if escaped != value {
            needles.push(escaped.as_bytes().to_vec());
        }
    }
    // Longest first: a secret containing another is replaced whole.
    needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    needles
}

/// `bytes` with every secret value replaced by [`REDACTED`].
pub fn bytes(input: &[u8], secrets: &BTreeMap<String, SecretString>) -> Vec<u8> {
    let mut out = input.to_vec();
    for needle in needles(secrets) {
        out = replace_all(&out, &needle, REDACTED.as_bytes());
    }
    out
}

/// `text` with every secret value replaced by [`REDACTED`].
pub fn text(input: &str, secrets: &BTreeMap<String, SecretString>) -> String {
    let scrubbed = bytes(input.as_bytes(), secrets);
    // Replacing whole UTF-8 sequences by ASCII keeps the text valid.
    String::from_utf8(scrubbed).expect("scrubbing keeps UTF-8 valid")
}

/// Scrubbed and cut to [`MAX_GUEST_TEXT_CHARS`] (scrubbed first, so a cut
/// never leaves half a secret behind).
pub fn guest_text(input: &str, secrets: &BTreeMap<String, SecretString>) -> String {
    let scrubbed = text(input, secrets);
    match scrubbed.char_indices().nth(MAX_GUEST_TEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &scrubbed[..cut]),
        None => scrubbed,
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(replacement);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> BTreeMap<String, SecretString> {
        BTreeMap::from([
            ("key".to_string(), "sk_live_abc123".into()),
            ("quoted".to_string(), "pa\"ss/word".into()),
        ])
    }

    #[test]
    fn every_occurrence_of_a_secret_is_replaced() {
        let body = br#"{"error":"bad key sk_live_abc123","again":"sk_live_abc123x"}"#;
        assert_eq!(
            bytes(body, &secrets()),
            br#"{"error":"bad key [redacted]","again":"[redacted]x"}"#.to_vec()
        );
        assert_eq!(text("no secret here", &secrets()), "no secret here");
    }

    #[test]
    fn the_json_escaped_form_is_replaced_too() {
        let body = r#"{"echo":"pa\"ss/word"}"#;
        assert_eq!(text(body, &secrets()), r#"{"echo":"[redacted]"}"#);
    }

    #[test]
    fn guest_text_is_scrubbed_before_it_is_cut() {
        let long = format!("{}sk_live_abc123", "é".repeat(MAX_GUEST_TEXT_CHARS - 3));
        let out = guest_text(&long, &secrets());
        assert!(!out.contains("sk_live"), "{out}");
        assert!(out.ends_with('…'));
        assert_eq!(out.chars().count(), MAX_GUEST_TEXT_CHARS + 1);
        assert_eq!(guest_text("short", &secrets()), "short");
    }
}
